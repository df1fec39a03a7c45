"""WSI-SAM (Liu et al. 2024): SAM with HR and LR tokens, a dual mask decoder and token aggregation.

Flow for N prompts on one HR crop and its concentric LR crop (see docs/model.md):

1. SAM's own pass: SAM's frozen decoder on the HR embedding and the HR prompts gives SAM's mask
   logits (N,1,256,256) and predicted IoU, exactly as segment-anything computes them.
2. HR pass: the HR token joins SAM's output tokens (IoU + 4 mask tokens) and the HR prompt
   tokens in SAM's frozen two-way transformer with the HR embedding; LR pass: the same with
   the LR token, the LR embedding and the LR prompts (the HR prompts mapped into the LR crop).
   The decoder's upscaled mask features (32x256x256) come from SAM's own pass (HR) and from
   the LR pass (LR, training only).
3. Each updated token goes through its resolution's hypernetwork MLP (256->256->32); the two
   32-d vectors are aggregated ("average" by default, see `fusion.TokenAggregation`).
4. The aggregated vector is applied (point-wise product, summed over channels) to the HR fused
   features, and, for training, to the LR fused features: HR and LR residual logits.
5. HR mask = SAM's mask logits + HR residual (HQ-SAM style); LR mask = the LR pass's SAM-token
   mask + LR residual. A fresh head has zero last hypernetwork layers: residuals are exactly
   0 and WSI-SAM's HR mask equals SAM's, bit for bit.

Every SAM parameter is frozen; only `WsiSamHead` (~0.9 M parameters) trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder
from torch import Tensor, nn

from ..scale import CROP_SIZE
from .encoder import EncoderOutput
from .fusion import Aggregation, ResolutionBranch, Role, TokenAggregation

SamMaskSource = Literal["separate", "joint"]


@dataclass(frozen=True)
class HeadConfig:
    """Settings that change what a head computes (saved with every head checkpoint).

    aggregation: how HR and LR token vectors merge (`fusion.AGGREGATIONS`).
    sam_mask: "separate" takes SAM's mask from SAM's own decoder pass (exactly SAM; one more
        transformer pass); "joint" takes it from the HR pass, where SAM's tokens also attend
        to the HR token, as the authors' code does (use it with their checkpoints).
    """

    aggregation: Aggregation = "average"
    sam_mask: SamMaskSource = "separate"


class WsiSamHead(nn.Module):
    """Everything WSI-SAM trains: the HR branch, the LR branch, the token aggregation."""

    def __init__(self, config: HeadConfig | None = None, *, early_dim: int = 160,
                 zero_init: bool = True) -> None:
        super().__init__()
        self.config = config or HeadConfig()
        if self.config.sam_mask not in ("separate", "joint"):
            raise ValueError(f"sam_mask must be 'separate' or 'joint', "
                             f"got {self.config.sam_mask!r}")
        self.hr = ResolutionBranch(role="hr", early_dim=early_dim, zero_init=zero_init)
        self.lr = ResolutionBranch(role="lr", early_dim=early_dim, zero_init=zero_init)
        self.aggregation = TokenAggregation(self.config.aggregation)

    def branch(self, role: Role) -> ResolutionBranch:
        return self.hr if role == "hr" else self.lr

    def num_parameters(self, *, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


@dataclass
class Prompts:
    """Prompts of one resolution, N of them, in encoder-input pixels of that crop.

    boxes: (N,4) XYXY float. points: (N,K,2) (x, y) float; labels: (N,K) int, 1 = object,
    0 = background, -1 = padding. masks: (N,1,256,256) float logits over the whole crop.
    At least one of boxes, points, masks is given.
    """

    boxes: Tensor | None = None
    points: Tensor | None = None
    labels: Tensor | None = None
    masks: Tensor | None = None
    n: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        sizes = {t.shape[0] for t in (self.boxes, self.points, self.masks) if t is not None}
        if len(sizes) != 1:
            raise ValueError(f"prompts need boxes, points or masks with one batch size, "
                             f"got {sizes}")
        if (self.points is None) != (self.labels is None):
            raise ValueError("points and labels go together")
        self.n = sizes.pop()

    def __len__(self) -> int:
        return self.n


class WsiSamOutput(NamedTuple):
    """Mask logits at 256x256 over the crop (upsample with `upsample_logits`)."""

    hr_logits: Tensor
    """(N,1,256,256): WSI-SAM's HR mask logits = SAM's + residual."""
    lr_logits: Tensor | None
    """(N,1,256,256) LR mask logits over the LR crop (training), or None."""
    sam_logits: Tensor
    """(N,1,256,256): SAM's own HR mask logits."""
    iou: Tensor
    """(N,1): SAM's predicted IoU of the returned mask."""


def upsample_logits(logits: Tensor, *, size: int = CROP_SIZE) -> Tensor:
    """(N,C,256,256) logits -> (N,C,size,size), bilinear as segment-anything's postprocessing."""
    return F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)


class DecoderInputs(NamedTuple):
    """One pass's inputs to SAM's two-way transformer (batch N)."""

    src: Tensor
    """(N,256,64,64): image embedding + dense prompt embedding."""
    pos_src: Tensor
    """(N or 1,256,64,64): the image positional encoding."""
    tokens: Tensor
    """(N,5[+1]+P,256): SAM's output tokens [+ the extra token] + the prompt tokens."""


def decoder_inputs(decoder: MaskDecoder, *, embedding: Tensor, image_pe: Tensor,
                   sparse: Tensor, dense: Tensor, extra_token: Tensor | None = None
                   ) -> DecoderInputs:
    """The transformer's inputs, built as segment-anything's ``MaskDecoder.predict_masks``
    builds them (so SAM's own pass gives its masks bit for bit); see `decode_tokens`."""
    weights = [decoder.iou_token.weight, decoder.mask_tokens.weight]
    if extra_token is not None:
        weights.append(extra_token)
    n = sparse.shape[0]
    output_tokens = torch.cat(weights, dim=0).unsqueeze(0).expand(n, -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)
    if n == 1 and embedding.shape[0] == 1:  # nothing to repeat (and no copy)
        src, pos_src = embedding, image_pe
    elif embedding.shape[0] == n:
        src = embedding
        pos_src = torch.repeat_interleave(image_pe, n, dim=0)
    elif embedding.shape[0] == 1:
        src = torch.repeat_interleave(embedding, n, dim=0)
        pos_src = torch.repeat_interleave(image_pe, n, dim=0)
    else:
        raise ValueError(f"embedding batch {embedding.shape[0]} fits neither 1 nor {n} prompts")
    return DecoderInputs(src + dense, pos_src, tokens)


def run_transformer(decoder: MaskDecoder, inputs: DecoderInputs, *, upscale: bool = True
                    ) -> tuple[Tensor, Tensor | None]:
    """SAM's two-way transformer on `inputs`: updated tokens (N,T,256) and, with `upscale`,
    the upscaled mask features (N,32,256,256)."""
    b, c, h, w = inputs.src.shape
    hs, src = decoder.transformer(inputs.src, inputs.pos_src, inputs.tokens)
    if not upscale:
        return hs, None
    return hs, decoder.output_upscaling(src.transpose(1, 2).view(b, c, h, w))


def decode_tokens(
    decoder: MaskDecoder,
    *,
    embedding: Tensor,
    image_pe: Tensor,
    sparse: Tensor,
    dense: Tensor,
    extra_token: Tensor | None = None,
    upscale: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Run SAM's frozen two-way transformer, optionally with one extra output token.

    embedding: (1 or N,256,64,64); image_pe: (1,256,64,64); sparse: (N,P,256) prompt tokens;
    dense: (N,256,64,64); extra_token: (1,256) placed after SAM's 5 output tokens.
    Returns hs (N,5[+1]+P,256), the updated tokens, and the upscaled mask features
    (N,32,256,256) (None without `upscale`). Arithmetic as segment-anything's
    ``MaskDecoder.predict_masks``, so SAM's own pass gives its masks bit for bit.
    """
    inputs = decoder_inputs(decoder, embedding=embedding, image_pe=image_pe, sparse=sparse,
                            dense=dense, extra_token=extra_token)
    return run_transformer(decoder, inputs, upscale=upscale)


def decode_stacked(decoder: MaskDecoder, first: DecoderInputs, second: DecoderInputs, *,
                   upscale: tuple[bool, bool]) -> list[tuple[Tensor, Tensor | None]]:
    """Two passes with the same token count (HR and LR) as one transformer call of batch 2N.

    Same weights, so each half equals its separate pass to float tolerance (a batch of 2N
    may pick other matrix kernels than N). Each half's mask features are upscaled when its
    `upscale` flag says so. On a GPU one call instead of two; on a CPU, measure first
    (benchmarks/bench_model.py): there a memory-bound batch of 2 costs more than 2 of 1.
    """
    if first.tokens.shape != second.tokens.shape:
        raise ValueError(f"stacked passes need the same tokens, got {tuple(first.tokens.shape)}"
                         f" and {tuple(second.tokens.shape)}")
    n = first.tokens.shape[0]
    pos = first.pos_src if first.pos_src.shape[0] == n else first.pos_src.expand(n, -1, -1, -1)
    stacked = DecoderInputs(torch.cat([first.src, second.src]), torch.cat([pos, pos]),
                            torch.cat([first.tokens, second.tokens]))
    b, c, h, w = stacked.src.shape
    hs, src = decoder.transformer(stacked.src, stacked.pos_src, stacked.tokens)
    grid = src.transpose(1, 2).view(b, c, h, w)
    out: list[tuple[Tensor, Tensor | None]] = []
    for half, wanted in enumerate(upscale):
        rows = slice(half * n, (half + 1) * n)
        out.append((hs[rows], decoder.output_upscaling(grid[rows]) if wanted else None))
    return out


def sam_masks(decoder: MaskDecoder, hs: Tensor, upscaled: Tensor, *,
              multimask: bool = False) -> tuple[Tensor, Tensor]:
    """SAM's mask logits (N,1,256,256) and IoU (N,1) from its own tokens in `hs`.

    multimask: choose among SAM's three multimask outputs the one with the best predicted IoU
    (better for a single point); otherwise SAM's single-mask output.
    """
    k = decoder.num_mask_tokens
    hyper = torch.stack([decoder.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in range(k)], 1)
    b, c, h, w = upscaled.shape
    masks = (hyper @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    iou = decoder.iou_prediction_head(hs[:, 0])
    if not multimask:
        return masks[:, :1], iou[:, :1]
    best = iou[:, 1:].argmax(dim=1)
    rows = torch.arange(b, device=masks.device)
    return masks[rows, 1 + best][:, None], iou[rows, 1 + best][:, None]


def encode_prompts(prompt_encoder: PromptEncoder, prompts: Prompts) -> tuple[Tensor, Tensor]:
    """-> sparse (N,P,256) and dense (N,256,64,64) prompt embeddings."""
    points = None if prompts.points is None else (prompts.points, prompts.labels)
    return prompt_encoder(points=points, boxes=prompts.boxes, masks=prompts.masks)


def sam_forward(prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, embedding: Tensor,
                prompts: Prompts, *, multimask: bool = False) -> tuple[Tensor, Tensor]:
    """SAM alone: (1 or N,256,64,64) embedding -> logits (N,1,256,256), IoU (N,1).

    Works for every SAM variant (MobileSAM, LiteMedSAM): its masks cover the encoder input.
    """
    sparse, dense = encode_prompts(prompt_encoder, prompts)
    hs, upscaled = decode_tokens(mask_decoder, embedding=embedding, sparse=sparse, dense=dense,
                                 image_pe=prompt_encoder.get_dense_pe())
    if upscaled is None:  # pragma: no cover - upscale=True
        raise RuntimeError("decoder gave no mask features")
    return sam_masks(mask_decoder, hs, upscaled, multimask=multimask)


class WsiSam(nn.Module):
    """SAM's frozen prompt encoder and mask decoder plus a trainable `WsiSamHead`.

    The image encoder stays outside (the predictor caches its outputs); `forward` takes the
    `EncoderOutput` of the HR and the LR crop.
    """

    def __init__(self, *, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder,
                 head: WsiSamHead | None = None) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder.requires_grad_(False).eval()
        self.mask_decoder = mask_decoder.requires_grad_(False).eval()
        self.head = head if head is not None else WsiSamHead()

    def train(self, mode: bool = True) -> WsiSam:
        """Train mode for the head only; SAM's parts stay frozen in eval mode."""
        self.head.train(mode)
        self.training = mode
        return self

    def encode_prompts(self, prompts: Prompts) -> tuple[Tensor, Tensor]:
        """-> sparse (N,P,256) and dense (N,256,64,64) prompt embeddings."""
        return encode_prompts(self.prompt_encoder, prompts)

    def sam_forward(self, embedding: Tensor, prompts: Prompts, *,
                    multimask: bool = False) -> tuple[Tensor, Tensor]:
        """SAM alone (see `sam_forward`)."""
        return sam_forward(self.prompt_encoder, self.mask_decoder, embedding, prompts,
                           multimask=multimask)

    def forward(
        self,
        hr: EncoderOutput,
        lr: EncoderOutput,
        hr_prompts: Prompts,
        lr_prompts: Prompts,
        *,
        multimask: bool = False,
        with_lr_mask: bool | None = None,
        hr_image_features: Tensor | None = None,
        sam_mask: SamMaskSource | None = None,
        stack_passes: bool = False,
    ) -> WsiSamOutput:
        """WSI-SAM masks for N prompts.

        hr, lr: encoder outputs of the HR and LR crop, batch 1 (N prompts on one crop pair) or
        N (one prompt per crop pair). hr_prompts, lr_prompts: the same N prompts in HR- and
        LR-crop encoder pixels. with_lr_mask: also compute `lr_logits` (default: in training).
        hr_image_features: (1 or N,32,256,256) cached ``head.hr.fusion.image_features``.
        sam_mask: override the head's `HeadConfig.sam_mask` ("joint" skips SAM's own pass:
            one transformer pass fewer, SAM's mask no longer exactly SAM's).
        stack_passes: run the HR and LR passes as one transformer call (`decode_stacked`).
        """
        if len(hr_prompts) != len(lr_prompts):
            raise ValueError(f"{len(hr_prompts)} HR prompts but {len(lr_prompts)} LR prompts")
        if with_lr_mask is None:
            with_lr_mask = self.training
        head, decoder = self.head, self.mask_decoder
        pe = self.prompt_encoder.get_dense_pe()
        hr_sparse, hr_dense = self.encode_prompts(hr_prompts)
        lr_sparse, lr_dense = self.encode_prompts(lr_prompts)
        joint = (sam_mask or head.config.sam_mask) == "joint"
        hr_in = decoder_inputs(decoder, embedding=hr.embedding, image_pe=pe, sparse=hr_sparse,
                               dense=hr_dense, extra_token=head.hr.token.weight)
        lr_in = decoder_inputs(decoder, embedding=lr.embedding, image_pe=pe, sparse=lr_sparse,
                               dense=lr_dense, extra_token=head.lr.token.weight)
        if stack_passes:
            (hs_hr, up_hr), (hs_lr, up_lr) = decode_stacked(decoder, hr_in, lr_in,
                                                            upscale=(joint, with_lr_mask))
        else:
            hs_hr, up_hr = run_transformer(decoder, hr_in, upscale=joint)
            hs_lr, up_lr = run_transformer(decoder, lr_in, upscale=with_lr_mask)
        if not joint:  # SAM's own pass; its upscaled mask features feed the HR fusion
            hs_hr_sam, up_hr = decode_tokens(decoder, embedding=hr.embedding, image_pe=pe,
                                             sparse=hr_sparse, dense=hr_dense)
        if up_hr is None:  # pragma: no cover - one of the two passes upscaled
            raise RuntimeError("decoder gave no mask features")
        sam_logits, iou = sam_masks(decoder, hs_hr if joint else hs_hr_sam, up_hr,
                                    multimask=multimask)
        extra = 1 + decoder.num_mask_tokens  # index of the new token in hs
        vector = head.aggregation(head.hr.vector(hs_hr[:, extra]), head.lr.vector(hs_lr[:, extra]))
        if hr_image_features is None:
            hr_image_features = head.hr.fusion.image_features(hr.embedding, hr.early)
        hr_logits = sam_logits + head.hr.fusion.project(vector, up_hr, hr_image_features)
        lr_logits = None
        if with_lr_mask:
            if up_lr is None:  # pragma: no cover - upscale=with_lr_mask
                raise RuntimeError("decoder gave no LR mask features")
            lr_sam, _ = sam_masks(decoder, hs_lr, up_lr, multimask=False)
            lr_features = head.lr.fusion.image_features(lr.embedding, lr.early)
            lr_logits = lr_sam + head.lr.fusion.project(vector, up_lr, lr_features)
        return WsiSamOutput(hr_logits, lr_logits, sam_logits, iou)
