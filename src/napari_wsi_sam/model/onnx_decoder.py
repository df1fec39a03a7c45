"""The prompt side of SAM and WSI-SAM on ONNX Runtime: the interactive path on a CPU.

Eager PyTorch pays per-op overhead at batch 1 that a warm prompt feels: SAM's decoder costs
~40 ms eager and ~21 ms in ONNX Runtime on 2 cores (docs/performance.md). Here each decoder is
traced into one ONNX graph (`onnx_runtime`: exported once per set of weights, kept on disk)
from rewritten pieces that compute what segment-anything's and our modules compute with
fewer operations: the two-way transformer with its image-side projections folded into the
few tokens (`folded_transformer`), layer norms over channels as one norm on a channels-last
view, and the fusion's per-prompt 3x3 conv as one batched product and one fixed conv
that shifts and sums its nine taps.

The prompt encoder stays in PyTorch (it is cheap); the graphs start from its outputs:

- `SamGraph`: the image in token layout (embedding + dense prompt, and the same + positional
  encoding: `ImageTokens`) and the sparse prompt embeddings -> SAM's four mask logits
  (N,4,256,256) and IoU estimates (N,4);
- `WsiSamGraph`: the same for the HR and the LR crop plus the HR fused image features -> SAM's
  masks and IoU (from SAM's own pass or, "joint", from the HR pass) and WSI-SAM's residual
  (N,1,256,256); the caller picks SAM's mask and adds the residual, as `WsiSam.forward` does.

Without a mask prompt the image tokens depend on the crop alone, so `OnnxDecoders` keeps the
last few crops' (`ImageTokens`): a warm prompt then starts from them instead of transposing
and adding three 4 MB tensors a pass.

Masks agree with the eager path to float tolerance (logits within ~1e-4), not bit for bit;
`WsiSamPredictor` keeps SAM-exactness by sending a fresh head through SAM's graph alone.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder
from segment_anything.modeling.common import LayerNorm2d
from torch import Tensor, nn

from .encoder import EncoderOutput
from .folded_transformer import two_way_tokens
from .fusion import MASK_DIM, FeatureFusion
from .onnx_runtime import (
    export_graph,
    graph_digest,
    graph_folder,
    run_session,
    shared_session,
)
from .wsi_sam import Prompts, WsiSam, WsiSamHead, encode_prompts

logger = logging.getLogger(__name__)

SAM_INPUTS = ("image", "image_keys", "sparse")
WSI_INPUTS = ("hr_image", "hr_image_keys", "lr_image", "lr_image_keys", "hr_features",
              "hr_sparse", "lr_sparse")
IMAGE_TOKENS_KEPT = 6
"""Crops whose image tokens `OnnxDecoders` keeps (8 MB each; a crop pair takes two)."""


# ----------------------------------------------------------------------- traced graphs
def channel_norm(norm: LayerNorm2d, x: Tensor, channels: int) -> Tensor:
    """`fusion.layer_norm_2d` with the channel count given as a Python int (a traced shape
    would make ONNX's LayerNormalization dynamic). Measured faster in ONNX Runtime than
    means over the NCHW channel axis (51 against 55 ms a WSI-SAM prompt)."""
    out = F.layer_norm(x.permute(0, 2, 3, 1), (channels,), norm.weight, norm.bias, norm.eps)
    return out.permute(0, 3, 1, 2)


def upscale(decoder: MaskDecoder, src: Tensor, shape: Sequence[int]) -> Tensor:
    """SAM's `output_upscaling` on the transformer's image tokens (N,HW,C) -> (N,32,4H,4W),
    with its LayerNorm2d as one layer norm over channels (the same value). Written as two
    channels-last products and one 8-D transpose instead, it ran slower (56 against 44 ms a
    WSI-SAM prompt)."""
    b, c, h, w = shape
    convt1, norm, act1, convt2, act2 = decoder.output_upscaling
    x = convt1(src.transpose(1, 2).reshape(b, c, h, w))
    return act2(convt2(act1(channel_norm(norm, x, convt1.out_channels))))


def sam_mask_logits(decoder: MaskDecoder, hs: Tensor, upscaled: Tensor) -> tuple[Tensor, Tensor]:
    """SAM's four mask logits (N,4,H,W) and IoU estimates (N,4) from its tokens in `hs`."""
    k = decoder.num_mask_tokens
    hyper = torch.stack([decoder.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in range(k)], 1)
    n, c, h, w = upscaled.shape
    masks = torch.matmul(hyper, upscaled.reshape(n, c, h * w)).reshape(n, k, h, w)
    return masks, decoder.iou_prediction_head(hs[:, 0])


def transformer_pass(decoder: MaskDecoder, image: Tensor, image_keys: Tensor, key_pe: Tensor,
                     sparse: Tensor, extra_token: Tensor | None = None
                     ) -> tuple[Tensor, Tensor]:
    """One pass of SAM's two-way transformer (`folded_transformer.two_way_tokens`) for N
    prompts: updated tokens (N,5[+1]+P,256) and image tokens (N,4096,256), built as
    `wsi_sam.decoder_inputs` builds them. image: (1 or N,4096,256) embedding + dense prompt
    in token layout, image_keys: the same + key_pe; extra_token: (1,256) after SAM's 5 output
    tokens (the HR or LR token).

    Each pass is its own call: stacking the HR and LR passes into one of batch 2N measured
    the same (53.7 against 52.8 ms a WSI-SAM prompt), stacking SAM's too (padded, masked)
    slower (60.3 ms): on a 2-core CPU larger batches are memory-bound.
    """
    n = sparse.shape[0]
    weights = [decoder.iou_token.weight, decoder.mask_tokens.weight]
    if extra_token is not None:
        weights.append(extra_token)
    tokens = torch.cat(weights, dim=0).unsqueeze(0).expand(n, -1, -1)
    return two_way_tokens(decoder.transformer, image, image_keys, key_pe,
                          torch.cat((tokens, sparse), dim=1))


def fused_residual(fusion: FeatureFusion, vectors: Tensor, upscaled: Tensor,
                   image_features: Tensor) -> Tensor:
    """`FeatureFusion.project` for a dynamic number of prompts, as plain matrix products.

    The last 3x3 conv, folded into each prompt's vector, is a 64->1 conv with a weight per
    prompt; ONNX has no per-sample weights, so each of its 9 taps is first reduced over the
    64 channels in one batched product (N,9,64) x (N,HW,64)^T on the channels-last hidden
    features (left so by the norm: no transpose back), and the 9 small maps are then shifted
    and summed by one fixed conv whose kernel picks tap t at offset t (`tap_shifts`): measured
    0.85 ms faster a prompt than 9 slices and 8 adds. Same value as `project` to float tolerance.
    """
    conv1, norm, act, conv2 = fusion.mask
    if not isinstance(conv2, nn.Conv2d) or conv2.bias is None or not isinstance(norm, LayerNorm2d):
        raise TypeError("the mask branch must be conv, LayerNorm2d, activation, biased conv")
    n, _, height, width = upscaled.shape
    channels, kernel = conv2.in_channels, int(conv2.kernel_size[0])
    pad = int(conv2.padding[0])  # type: ignore[index]
    x = conv1(upscaled).permute(0, 2, 3, 1)  # channels-last for the norm and the product
    hidden = act(F.layer_norm(x, (channels,), norm.weight, norm.bias, norm.eps))
    weight = torch.einsum("nc,cikl->nikl", vectors, conv2.weight)  # (N,64,k,k)
    taps = weight.reshape(n, channels, kernel * kernel).transpose(1, 2)  # (N,k*k,64)
    reduced = torch.matmul(taps, hidden.reshape(n, height * width, channels).transpose(1, 2))
    logits = F.conv2d(reduced.reshape(n, kernel * kernel, height, width),
                      tap_shifts(kernel, reduced.dtype), padding=pad)  # (N,1,H,W)
    bias = torch.matmul(vectors, conv2.bias)  # (N,)
    image_term = torch.matmul(vectors, image_features.reshape(image_features.shape[1], -1))
    return logits + (bias[:, None] + image_term).reshape(n, 1, height, width)


def tap_shifts(kernel: int, dtype: torch.dtype) -> Tensor:
    """(1,k*k,k,k) one-hot kernel: channel t holds 1 at its tap (t // k, t % k), so a conv
    sums the k*k per-tap maps, each shifted to where its tap reads."""
    shifts = torch.zeros(1, kernel * kernel, kernel, kernel, dtype=dtype)
    for tap in range(kernel * kernel):
        shifts[0, tap, tap // kernel, tap % kernel] = 1.0
    return shifts


def key_positions(prompt_encoder: PromptEncoder) -> Tensor:
    """The image tokens' positional encoding (1,4096,256), in the transformer's token layout:
    a constant of the graph (it depends on no input), so no pass transposes it."""
    pe = prompt_encoder.get_dense_pe().detach().to("cpu", torch.float32)
    return pe.flatten(2).permute(0, 2, 1).contiguous()


class SamGraph(nn.Module):
    """SAM's mask decoder after the prompt encoder, for N prompts on one embedding."""

    key_pe: Tensor

    def __init__(self, prompt_encoder: PromptEncoder, decoder: MaskDecoder) -> None:
        super().__init__()
        self.decoder = decoder
        self.grid = image_grid(prompt_encoder)
        self.register_buffer("key_pe", key_positions(prompt_encoder))

    def forward(self, image: Tensor, image_keys: Tensor, sparse: Tensor
                ) -> tuple[Tensor, Tensor]:
        hs, src = transformer_pass(self.decoder, image, image_keys, self.key_pe, sparse)
        return sam_mask_logits(self.decoder, hs, upscale(self.decoder, src,
                                                         (sparse.shape[0], *self.grid)))


class WsiSamGraph(nn.Module):
    """WSI-SAM's decoder after the prompt encoders, for N prompts on one crop pair.

    joint=False: SAM's masks from SAM's own pass (exactly SAM's arithmetic; three passes);
    joint=True: from the HR pass (the head's `sam_mask` "joint"; two passes).
    """

    key_pe: Tensor

    def __init__(self, prompt_encoder: PromptEncoder, decoder: MaskDecoder, head: WsiSamHead, *,
                 joint: bool) -> None:
        super().__init__()
        self.decoder, self.head, self.joint = decoder, head, joint
        self.grid = image_grid(prompt_encoder)
        self.register_buffer("key_pe", key_positions(prompt_encoder))

    def forward(self, hr_image: Tensor, hr_image_keys: Tensor, lr_image: Tensor,
                lr_image_keys: Tensor, hr_features: Tensor, hr_sparse: Tensor,
                lr_sparse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        decoder, head, key_pe = self.decoder, self.head, self.key_pe
        hs_hr, src_hr = transformer_pass(decoder, hr_image, hr_image_keys, key_pe, hr_sparse,
                                         head.hr.token.weight)
        hs_lr, _ = transformer_pass(decoder, lr_image, lr_image_keys, key_pe, lr_sparse,
                                    head.lr.token.weight)
        if self.joint:
            hs_sam, src_sam = hs_hr, src_hr
        else:
            hs_sam, src_sam = transformer_pass(decoder, hr_image, hr_image_keys, key_pe,
                                               hr_sparse)
        upscaled = upscale(decoder, src_sam, (hr_sparse.shape[0], *self.grid))
        masks, iou = sam_mask_logits(decoder, hs_sam, upscaled)
        extra = 1 + decoder.num_mask_tokens
        vector = head.aggregation(head.hr.vector(hs_hr[:, extra]),
                                  head.lr.vector(hs_lr[:, extra]))
        residual = fused_residual(head.hr.fusion, vector, upscaled, hr_features)
        return masks, iou, residual


def image_grid(prompt_encoder: PromptEncoder) -> tuple[int, int, int]:
    """(C, H, W) of SAM's image embedding, as Python ints (traced reshapes keep them fixed)."""
    height, width = prompt_encoder.image_embedding_size
    return (int(prompt_encoder.embed_dim), int(height), int(width))


# ----------------------------------------------------------------------- image tokens
class ImageTokens(NamedTuple):
    """A crop's image as the transformer's first layer reads it: embedding + dense prompt in
    token layout (1 or N,4096,256), and the same + the positional encoding."""

    image: Tensor
    keys: Tensor


def image_tokens(embedding: Tensor, dense: Tensor, key_pe: Tensor) -> ImageTokens:
    """`ImageTokens` of an embedding (1,256,64,64) and dense prompt embeddings: (N,256,64,64)
    from mask prompts, or (1,256,1,1), SAM's no-mask embedding, which broadcasts."""
    image = (embedding + dense).flatten(2).permute(0, 2, 1).contiguous()
    return ImageTokens(image, image + key_pe)


# ----------------------------------------------------------------------- export and run
def _dynamic(names: Sequence[str]) -> dict[str, dict[int, str]]:
    """Dynamic axes: the prompts and the prompt tokens; the image tokens' first axis (1, or
    one image per prompt with mask prompts)."""
    axes: dict[str, dict[int, str]] = {}
    for name in names:
        if name.endswith("sparse"):
            axes[name] = {0: "prompts", 1: "tokens"}
        elif "image" in name:
            axes[name] = {0: f"{name}_count"}
    return axes


class OnnxDecoders:
    """The ONNX Runtime sessions of one predictor: SAM's graph and one WSI-SAM graph per head.

    Sessions are built lazily (export on the first use of a set of weights, then read from
    the disk cache) and dropped with `forget_head` when the predictor's head changes.
    """

    def __init__(self, *, folder: Path | None = None) -> None:
        self.folder = folder or graph_folder()
        self._sessions: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self._positions: dict[int, tuple[Any, Tensor]] = {}
        self._tokens: OrderedDict[tuple[int, int], tuple[Any, ImageTokens]] = OrderedDict()

    def _session(self, key: tuple, build: Any) -> Any:
        with self._lock:
            if key not in self._sessions:
                self._sessions[key] = build()
            return self._sessions[key]

    def forget_head(self) -> None:
        with self._lock:
            self._sessions = {k: v for k, v in self._sessions.items() if k[0] == "sam"}

    def key_positions(self, prompt_encoder: PromptEncoder) -> Tensor:
        """`key_positions` of a prompt encoder, computed once."""
        with self._lock:
            known = self._positions.get(id(prompt_encoder))
            if known is None or known[0]() is not prompt_encoder:
                known = (weakref.ref(prompt_encoder), key_positions(prompt_encoder))
                self._positions[id(prompt_encoder)] = known
            return known[1]

    def prompt_inputs(self, prompt_encoder: PromptEncoder, embedding: Tensor, prompts: Prompts
                      ) -> tuple[ImageTokens, Tensor]:
        """The image tokens and sparse embeddings of N prompts on one crop. Without mask
        prompts the tokens are the crop's alone, kept for the last `IMAGE_TOKENS_KEPT` crops
        (by the embedding tensor's identity: the embedding cache hands out the same one)."""
        sparse, dense = encode_prompts(prompt_encoder, prompts)
        key_pe = self.key_positions(prompt_encoder)
        if prompts.masks is not None:
            return image_tokens(embedding, dense, key_pe), sparse
        key = (id(embedding), id(prompt_encoder))
        with self._lock:
            known = self._tokens.get(key)
            if known is not None and known[0]() is embedding:
                self._tokens.move_to_end(key)
                return known[1], sparse
        tokens = image_tokens(embedding, dense[:1, :, :1, :1], key_pe)
        with self._lock:
            self._tokens[key] = (weakref.ref(embedding), tokens)
            while len(self._tokens) > IMAGE_TOKENS_KEPT:
                self._tokens.popitem(last=False)
        return tokens, sparse

    def sam_session(self, prompt_encoder: PromptEncoder, decoder: MaskDecoder) -> Any:
        def build() -> Any:  # the graph only on a miss: it computes the positional encoding
            graph = SamGraph(prompt_encoder, decoder)
            path = self.folder / f"sam-{graph_digest(graph, 'sam')}.onnx"
            if not path.exists():
                image, keys, sparse = _sam_example(decoder)
                export_graph(graph, (image, keys, sparse), SAM_INPUTS, ("masks", "iou"),
                             _dynamic(SAM_INPUTS), path)
            return shared_session(path)

        return self._session(("sam", id(decoder)), build)

    def wsi_session(self, prompt_encoder: PromptEncoder, decoder: MaskDecoder,
                    head: WsiSamHead, *, joint: bool) -> Any:
        def build() -> Any:
            graph = WsiSamGraph(prompt_encoder, decoder, head, joint=joint)
            kind = "joint" if joint else "separate"
            path = self.folder / f"wsi-sam-{kind}-{graph_digest(graph, kind)}.onnx"
            if not path.exists():
                image, keys, sparse = _sam_example(decoder)
                features = torch.zeros(1, MASK_DIM, 256, 256)
                example = (image, keys, image.clone(), keys.clone(), features, sparse,
                           sparse.clone())
                export_graph(graph, example, WSI_INPUTS, ("masks", "iou", "residual"),
                             _dynamic(WSI_INPUTS), path)
            return shared_session(path)

        return self._session(("wsi", id(head), joint), build)

    def sam(self, prompt_encoder: PromptEncoder, decoder: MaskDecoder, embedding: Tensor,
            prompts: Prompts, *, multimask: bool = False) -> tuple[Tensor, Tensor]:
        """`wsi_sam.sam_forward` on ONNX Runtime: logits (N,1,256,256), IoU (N,1)."""
        tokens, sparse = self.prompt_inputs(prompt_encoder, embedding, prompts)
        masks, iou = run_session(self.sam_session(prompt_encoder, decoder), SAM_INPUTS,
                                 (*tokens, sparse))
        return pick_mask(masks, iou, multimask=multimask)

    def wsi_sam(self, wsi: WsiSam, hr: EncoderOutput, lr: EncoderOutput, hr_features: Tensor,
                hr_prompts: Prompts, lr_prompts: Prompts, *, multimask: bool = False,
                joint: bool = False) -> tuple[Tensor, Tensor]:
        """WSI-SAM's HR logits (N,1,256,256) and SAM's IoU (N,1), as `WsiSam.forward` gives
        them without the LR mask. A head whose last layers are zero adds exactly nothing, so
        without "joint" it runs SAM's graph alone: SAM's masks, as the "sam" model gives them.
        """
        if not joint and head_is_fresh(wsi.head):
            return self.sam(wsi.prompt_encoder, wsi.mask_decoder, hr.embedding, hr_prompts,
                            multimask=multimask)
        hr_tokens, hr_sparse = self.prompt_inputs(wsi.prompt_encoder, hr.embedding, hr_prompts)
        lr_tokens, lr_sparse = self.prompt_inputs(wsi.prompt_encoder, lr.embedding, lr_prompts)
        session = self.wsi_session(wsi.prompt_encoder, wsi.mask_decoder, wsi.head, joint=joint)
        masks, iou, residual = run_session(
            session, WSI_INPUTS, (*hr_tokens, *lr_tokens, hr_features, hr_sparse, lr_sparse))
        logits, best_iou = pick_mask(masks, iou, multimask=multimask)
        return logits + residual, best_iou


def pick_mask(masks: Tensor, iou: Tensor, *, multimask: bool) -> tuple[Tensor, Tensor]:
    """SAM's single-mask output, or with `multimask` the best of its three others by
    predicted IoU (as `wsi_sam.sam_masks` chooses)."""
    if not multimask:
        return masks[:, :1], iou[:, :1]
    best = iou[:, 1:].argmax(dim=1)
    rows = torch.arange(masks.shape[0])
    return masks[rows, 1 + best][:, None], iou[rows, 1 + best][:, None]


def head_is_fresh(head: WsiSamHead) -> bool:
    """Whether both branches' last hypernetwork layers are zero (the head adds exactly 0)."""
    for branch in (head.hr, head.lr):
        last = branch.hypernet.layers[-1]
        if bool(last.weight.any()) or bool(last.bias.any()):
            return False
    return True


def _sam_example(decoder: MaskDecoder) -> tuple[Tensor, Tensor, Tensor]:
    """Example inputs for tracing: one crop's image tokens (the count is a dynamic axis: N
    with mask prompts) and 2 prompts of 3 tokens (so no prompt size is traced as 1)."""
    dim = decoder.transformer_dim
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 4096, dim, generator=generator)
    return (image, image + torch.randn(1, 4096, dim, generator=generator),
            torch.randn(2, 3, dim, generator=generator))


