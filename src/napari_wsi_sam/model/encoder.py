"""TinyViT image encoder in MobileSAM's layout, hosted on timm's ``TinyVit``.

Provenance: MobileSAM (Zhang et al. 2023, Apache-2.0) distils SAM's ViT-H encoder into a
TinyViT-5M (Wu et al. 2022) whose last patch merging keeps 64x64 (stride 1) and which ends in
SAM's neck. timm 1.0's ``timm.models.tiny_vit.TinyVit`` has the same blocks; we build it
directly (not through the timm registry, which the official ``mobile_sam`` package overwrites
when imported), set the stride of the stage-4 downsample to 1, drop its classifier head and add
the neck. `checkpoint_filter_fn` maps the official weight names onto ours (see docs/model.md).

LiteMedSAM (the MedSAM baseline) is the same network with 1x1, stride-1 patch-embedding
convolutions and 256x256 input; both give a (B,256,64,64) embedding.

The encoder also returns the early feature WSI-SAM fuses into its masks: the output of the
128->160 patch merging at 64x64, i.e. official ``layers[1]`` output (the reference code's
``interm_embeddings[0]``), which is ``stages[2].downsample`` in timm's layout, *before* the
six attention blocks of the third stage (those blocks also give 160x64x64, but they are not
what the reference heads were trained on).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models.tiny_vit import Attention, PatchMerging, TinyVit, TinyVitStage
from torch import Tensor, nn

from ..errors import WeightsError

logger = logging.getLogger(__name__)

EMBED_DIM = 256
"""Channels of the final image embedding (SAM's prompt_embed_dim)."""
EMBED_SIZE = 64
"""Side of the embedding grid, in tokens, for every variant."""

PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
"""ImageNet mean on 0-255 RGB (MobileSAM / SAM preprocessing)."""
PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
"""ImageNet std on 0-255 RGB."""

_TINY_VIT_5M: dict[str, Any] = {
    "embed_dims": (64, 128, 160, 320),
    "depths": (2, 2, 6, 2),
    "num_heads": (2, 4, 5, 10),
    "window_sizes": (7, 7, 14, 7),
    "mlp_ratio": 4.0,
    "mbconv_expand_ratio": 4.0,
    "local_conv_size": 3,
}

ENCODER_CONFIGS: dict[str, dict[str, Any]] = {
    # The official MobileSAM encoder: 1024x1024 input, two 3x3 stride-2 patch convolutions.
    "mobile_sam": {
        **_TINY_VIT_5M, "img_size": 1024, "patch_kernel": 3, "patch_stride": 2,
        "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD,
    },
    # LiteMedSAM: 256x256 input, 1x1 stride-1 patch convolutions, input scaled to [0, 1].
    "lite_medsam": {
        **_TINY_VIT_5M, "img_size": 256, "patch_kernel": 1, "patch_stride": 1,
        "pixel_mean": (0.0, 0.0, 0.0), "pixel_std": (255.0, 255.0, 255.0),
    },
}
"""Registered encoder variants: plain dicts of `TinyViTSamEncoder` settings."""

# Official (MobileSAM / LiteMedSAM) name -> our name, applied in order; see docs/model.md.
_KEY_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^patch_embed\.seq\.0\."), "patch_embed.conv1."),
    (re.compile(r"^patch_embed\.seq\.2\."), "patch_embed.conv2."),
    (re.compile(r"\.c\.weight$"), ".conv.weight"),
    (re.compile(r"^layers\.(\d+)\.blocks\."), r"stages.\1.blocks."),
)
_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")
_DROPPED = re.compile(r"^(head|norm_head)\.")  # the ImageNet classifier; SAM never uses it


class EncoderOutput(NamedTuple):
    """What the encoder gives per image."""

    embedding: Tensor
    """(B,256,64,64) float32: the final image embedding (after the neck)."""
    early: Tensor
    """(B,160,64,64) float32: output of the 128->160 patch merging (WSI-SAM's early feature)."""


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Map official TinyViT-SAM encoder weights onto `TinyViTSamEncoder` names.

    `state_dict` holds the encoder's own keys, without the ``image_encoder.`` prefix.
    Returns (mapped state dict, dropped keys); the dropped keys are the unused ImageNet
    classifier (``head.*``, ``norm_head.*``). Unknown keys pass through unchanged, so that
    strict loading reports them.
    """
    mapped: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in state_dict.items():
        if _DROPPED.match(key):
            dropped.append(key)
            continue
        new = _DOWNSAMPLE.sub(lambda m: f"stages.{int(m.group(1)) + 1}.downsample.", key)
        for pattern, replacement in _KEY_RULES:
            new = pattern.sub(replacement, new)
        mapped[new] = value
    return mapped, dropped


class TinyViTSamEncoder(nn.Module):
    """TinyViT-5M image encoder for SAM: (B,3,S,S) normalised images -> `EncoderOutput`.

    ``S`` is `img_size` (1024 for MobileSAM, 256 for LiteMedSAM). Inputs come from
    `preprocess` (or `TinyViTSamEncoder.preprocess`), already normalised.
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        patch_kernel: int = 3,
        patch_stride: int = 2,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        if len(embed_dims) != 4 or len(depths) != 4:
            raise ValueError(f"TinyViT-SAM needs 4 stages, got embed_dims={tuple(embed_dims)}")
        grid = img_size // (4 * patch_stride**2)
        if grid != EMBED_SIZE or img_size % (4 * patch_stride**2):
            raise ValueError(f"img_size={img_size} with patch_stride={patch_stride} gives a "
                             f"{grid}x{grid} grid; SAM's decoder needs {EMBED_SIZE}x{EMBED_SIZE}")
        self.img_size = img_size
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)
        self.channels_last = False
        trunk = TinyVit(
            in_chans=3, num_classes=0, embed_dims=tuple(embed_dims), depths=tuple(depths),
            num_heads=tuple(num_heads), window_sizes=tuple(window_sizes), mlp_ratio=mlp_ratio,
            drop_rate=0.0, proj_drop_rate=0.0, drop_path_rate=0.0,
            mbconv_expand_ratio=mbconv_expand_ratio, local_conv_size=local_conv_size,
        )
        self.patch_embed = trunk.patch_embed
        if (patch_kernel, patch_stride) != (3, 2):
            pad = patch_kernel // 2
            for conv_norm in (self.patch_embed.conv1, self.patch_embed.conv2):
                old = conv_norm.conv
                conv_norm.conv = nn.Conv2d(old.in_channels, old.out_channels, patch_kernel,
                                           patch_stride, pad, bias=False)
        self.stages = trunk.stages
        # MobileSAM's last patch merging keeps the 64x64 grid.
        cast(PatchMerging, cast(TinyVitStage, self.stages[3]).downsample).conv2.conv.stride = (1, 1)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], EMBED_DIM, kernel_size=1, bias=False),
            LayerNorm2d(EMBED_DIM, eps=1e-6),
            nn.Conv2d(EMBED_DIM, EMBED_DIM, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(EMBED_DIM, eps=1e-6),
        )
        self.early_dim = int(embed_dims[2])

    def forward(self, x: Tensor) -> EncoderOutput:
        """(B,3,img_size,img_size) float32, normalised -> `EncoderOutput`."""
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (self.img_size,) * 2:
            raise ValueError(f"expected (B,3,{self.img_size},{self.img_size}) input, "
                             f"got {tuple(x.shape)}; use preprocess(..., img_size={self.img_size})")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.patch_embed(x)
        x = self.stages[0](x)
        x = self.stages[1](x)
        third = cast(TinyVitStage, self.stages[2])
        early = third.downsample(x)
        x = third.blocks(early.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.stages[3](x)
        embedding = self.neck(x)
        return EncoderOutput(embedding.contiguous(), early.contiguous())

    def preprocess(self, images: np.ndarray) -> Tensor:
        """(B,H,W,3) or (H,W,3) uint8 RGB -> (B,3,S,S) float32 with this variant's settings."""
        return preprocess(images, img_size=self.img_size, pixel_mean=self.pixel_mean,
                          pixel_std=self.pixel_std)

    def clear_attention_caches(self) -> None:
        """Forget cached attention biases (timm caches them in eval mode)."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.attention_bias_cache = {}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False):  # type: ignore[override]
        """As `nn.Module.load_state_dict`, then drop attention biases cached from old weights."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.clear_attention_caches()
        return result

    def load_official(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Load official MobileSAM/LiteMedSAM encoder weights (no prefix) strictly; set eval mode.

        Returns the dropped classifier keys. Raises `WeightsError` when any key is missing,
        unexpected, or of the wrong shape.
        """
        mapped, dropped = checkpoint_filter_fn(state_dict)
        try:
            self.load_state_dict(mapped, strict=True)
        except RuntimeError as error:
            first = str(error).strip().splitlines()
            detail = " ".join(line.strip() for line in first[:3])
            raise WeightsError(f"image encoder weights do not fit the "
                               f"{self.img_size}px TinyViT-SAM encoder: {detail[:400]}") from error
        self.eval()
        logger.debug("loaded %d encoder tensors, dropped %s", len(mapped), dropped)
        return dropped


def build_encoder(name: str = "mobile_sam") -> TinyViTSamEncoder:
    """Build a registered variant with random weights (see `ENCODER_CONFIGS`)."""
    if name not in ENCODER_CONFIGS:
        raise WeightsError(f"unknown encoder {name!r}; known: {', '.join(ENCODER_CONFIGS)}")
    return TinyViTSamEncoder(**ENCODER_CONFIGS[name])


def preprocess(
    images: np.ndarray,
    *,
    img_size: int,
    pixel_mean: Sequence[float] = PIXEL_MEAN,
    pixel_std: Sequence[float] = PIXEL_STD,
) -> Tensor:
    """(B,H,W,3) or (H,W,3) uint8 RGB crops -> (B,3,img_size,img_size) float32, normalised.

    Square crops of another size are resized with antialiasing (bilinear), e.g. 1024x1024
    crops to 256x256 for LiteMedSAM; then ``(x - pixel_mean) / pixel_std`` on 0-255 values.
    """
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected (B,H,W,3) or (H,W,3) RGB images, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (0-255), got {array.dtype}")
    height, width = array.shape[1:3]
    if height != width:
        raise ValueError(f"expected square crops, got {height}x{width}")
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float()
    if height != img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False,
                          antialias=True)
    mean = torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def optimise_for_inference(
    encoder: TinyViTSamEncoder, *, channels_last: bool = True, compile: bool = False
) -> TinyViTSamEncoder:
    """Prepare `encoder` for CPU inference in place and return it.

    Sets eval mode and freezes it; ``channels_last`` stores conv weights and activations in
    NHWC (same results to float rounding, ~1.3x faster on CPU); ``compile`` applies
    ``torch.compile`` (the first call then takes tens of seconds to compile).
    """
    encoder.eval().requires_grad_(False)
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
        encoder.channels_last = True
    if compile:
        encoder.compile(dynamic=False)
    return encoder
