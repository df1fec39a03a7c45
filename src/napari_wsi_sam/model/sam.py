"""The frozen SAM parts WSI-SAM builds on: TinyViT encoder, prompt encoder, mask decoder.

The prompt encoder and mask decoder are segment-anything's own modules with MobileSAM's
settings; only the image encoder is ours (`encoder.TinyViTSamEncoder`). `load_sam` reads an
official checkpoint (MobileSAM ``mobile_sam.pt`` or LiteMedSAM ``lite_medsam.pth``: keys
``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``), loads every part strictly,
freezes it and puts it in eval mode.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import Tensor, nn

from ..errors import WeightsError, one_line
from .encoder import EMBED_DIM, EMBED_SIZE, ENCODER_CONFIGS, TinyViTSamEncoder, build_encoder
from .weights import find_weights, install_command

logger = logging.getLogger(__name__)

PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")
"""Top-level key prefixes of an official SAM checkpoint."""


@dataclass(eq=False)
class SamParts:
    """The three frozen SAM modules of one variant, on one device, in eval mode."""

    encoder: TinyViTSamEncoder
    """(B,3,S,S) normalised -> EncoderOutput(embedding (B,256,64,64), early (B,160,64,64))."""
    prompt_encoder: PromptEncoder
    """Points (x, y) / boxes XYXY in encoder-input pixels (0..S) -> sparse and dense embeddings."""
    mask_decoder: MaskDecoder
    """Embedding + prompts -> (B,1 or 3,256,256) mask logits and IoU predictions."""
    name: str = "mobile_sam"
    checkpoint: Path | None = None

    @property
    def img_size(self) -> int:
        """Side S of the encoder input in pixels (1024 MobileSAM, 256 LiteMedSAM)."""
        return self.encoder.img_size

    def modules(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        return (self.encoder, self.prompt_encoder, self.mask_decoder)

    def to(self, device: str | torch.device) -> SamParts:
        """Move all parts to `device` in place; returns self."""
        for module in self.modules():
            module.to(device)
        return self


def build_sam_parts(name: str = "mobile_sam") -> SamParts:
    """Build the parts of variant `name` with random weights, frozen and in eval mode."""
    if name not in ENCODER_CONFIGS:
        raise WeightsError(f"unknown model {name!r}; known: {', '.join(ENCODER_CONFIGS)}")
    encoder = build_encoder(name)
    size = encoder.img_size
    prompt_encoder = PromptEncoder(
        embed_dim=EMBED_DIM,
        image_embedding_size=(EMBED_SIZE, EMBED_SIZE),
        input_image_size=(size, size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048, num_heads=8),
        transformer_dim=EMBED_DIM,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    parts = SamParts(encoder, prompt_encoder, mask_decoder, name=name)
    _freeze(parts)
    return parts


def load_sam(
    name: str = "mobile_sam",
    *,
    checkpoint: Path | None = None,
    device: str | torch.device = "cpu",
) -> SamParts:
    """Load variant `name` ("mobile_sam" or "lite_medsam") with its official weights.

    `checkpoint` overrides the search (see `weights.find_weights`). Every key must match:
    raises `WeightsError` naming ``napari-wsi-sam weights install NAME`` when the file is
    missing, unreadable, corrupt or of another model.
    """
    path = find_weights(name, path=checkpoint)
    state = read_checkpoint(path, name=name)
    parts = build_sam_parts(name)
    by_part = split_state_dict(state, name=name, path=path)
    fix = f"check the file or run `{install_command(name)}`"
    try:
        parts.encoder.load_official(by_part["image_encoder"])
    except WeightsError as error:
        raise WeightsError(f"{path}: {error}; {fix}") from error
    for part, module in (("prompt_encoder", parts.prompt_encoder),
                         ("mask_decoder", parts.mask_decoder)):
        try:
            module.load_state_dict(by_part[part], strict=True)
        except RuntimeError as error:
            detail = one_line(error, 300)
            raise WeightsError(f"{path}: {part} weights do not fit {name}: {detail}; "
                               f"{fix}") from error
    parts.checkpoint = path
    _freeze(parts)  # eval() after loading: the encoder caches attention biases in eval mode
    parts.to(device)
    logger.info("loaded %s from %s on %s", name, path, device)
    return parts


def read_checkpoint(path: Path, *, name: str) -> dict[str, Tensor]:
    """Read a state dict with ``torch.load(map_location="cpu", weights_only=True)``.

    A dict wrapping the state dict under "model" or "state_dict" is unwrapped.
    """
    fix = f"delete it and run `{install_command(name)}`"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged pickle can raise anything
        reason = one_line(error)
        raise WeightsError(f"{path} is not a readable checkpoint ({reason}); {fix}") from error
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors; {fix}")
    return dict(state)


def split_state_dict(
    state: Mapping[str, Tensor], *, name: str, path: Path
) -> dict[str, dict[str, Tensor]]:
    """Split by top-level prefix: {"image_encoder": {...}, ...}, prefixes removed."""
    by_part: dict[str, dict[str, Tensor]] = {part: {} for part in PARTS}
    unknown = []
    for key, value in state.items():
        part, _, rest = key.partition(".")
        if part in by_part and rest:
            by_part[part][rest] = value
        else:
            unknown.append(key)
    empty = [part for part, values in by_part.items() if not values]
    if unknown or empty:
        problem = (f"keys outside {'/'.join(PARTS)} (e.g. {unknown[:3]})" if unknown
                   else f"no {', '.join(empty)} weights")
        raise WeightsError(f"{path} is not a SAM checkpoint for {name}: {problem}; "
                           f"run `{install_command(name)}` or give the right file")
    return by_part


def _freeze(parts: SamParts) -> None:
    for module in parts.modules():
        module.requires_grad_(False)
        module.eval()
