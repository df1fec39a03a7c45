"""The instance decoder: every object of an HR crop in one pass over the frozen encoder.

Segment all with point prompts pays SAM's decoder once per grid point. The field's answer
(micro-sam and PathoSAM's automatic instance segmentation, HoVer-Net and CellViT before them)
is a small learned decoder on the image features that predicts, per pixel, three maps from
which a seeded watershed cuts the instances (`instance_watershed`):

- foreground: the pixel belongs to some object (a logit);
- centre distance: distance to the object's centre over the object's largest such distance
  (0 at the centre, 1 at its rim and on background);
- boundary distance: 1 - distance to the object's boundary over its largest (0 deep inside,
  1 on the boundary and on background).

Ours reads WSI-SAM's two crops. The HR crop gives MobileSAM's final embedding and early
feature (both 64x64) and its own pixels, through a small convolutional stem, for boundaries
at 2 HR px; the concentric LR crop's embedding gives context (stroma or tumour nest, what
surrounds the field): its centre, where the HR field lies, aligned on the HR grid, and its
mean over the whole LR field. The maps come out at half the HR crop's resolution (512x512).
Pure modules; no napari, no slide access.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..scale import CROP_SIZE
from .encoder import PIXEL_MEAN, PIXEL_STD, EncoderOutput

OUTPUT_SIZE = CROP_SIZE // 2
"""Side of the predicted maps: 512 px, 2 HR px each."""
MAP_NAMES = ("foreground", "centre distance", "boundary distance")


@dataclass(frozen=True)
class InstanceDecoderConfig:
    """What the decoder computes. widths: channels at 64², 128², 256² and 512²;
    context: read the LR crop's embedding (WSI-SAM's 5x context) or not (HR alone)."""

    widths: tuple[int, int, int, int] = (96, 48, 24, 16)
    context: bool = True

    def to_dict(self) -> dict:
        out = asdict(self)
        out["widths"] = list(self.widths)
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> InstanceDecoderConfig:
        widths = tuple(int(w) for w in raw.get("widths", cls.widths))
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be 4 positive channel counts, got {widths}")
        return cls(widths=widths, context=bool(raw.get("context", True)))  # type: ignore[arg-type]


def _block(channels_in: int, channels_out: int) -> nn.Sequential:
    """conv3x3 -> GroupNorm -> GELU (GroupNorm: batches of 1 or 2 on a CPU)."""
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
                         nn.GroupNorm(min(8, channels_out), channels_out), nn.GELU())


class InstanceDecoder(nn.Module):
    """(HR `EncoderOutput`, LR `EncoderOutput` or None, HR pixels) -> (B, 3, 512, 512) maps:
    foreground logit, centre distance and boundary distance (both 0..1 after a sigmoid)."""

    def __init__(self, config: InstanceDecoderConfig | None = None, *, embed_dim: int = 256,
                 early_dim: int = 160) -> None:
        super().__init__()
        self.config = config or InstanceDecoderConfig()
        w64, w128, w256, w512 = self.config.widths
        context_dim = embed_dim if self.config.context else 0
        self.inputs = nn.Sequential(
            nn.Conv2d(embed_dim + early_dim + context_dim, w64, 1, bias=False),
            nn.GroupNorm(8, w64), nn.GELU(), _block(w64, w64))
        self.context = nn.Linear(embed_dim, w64) if self.config.context else None
        # the HR pixels at 512², 256² and 128² (a stem of strided convolutions)
        self.stem512 = _block(3, w512)
        self.stem256 = nn.Sequential(nn.Conv2d(w512, w256, 3, stride=2, padding=1), nn.GELU())
        self.stem128 = nn.Sequential(nn.Conv2d(w256, w128, 3, stride=2, padding=1), nn.GELU())
        self.up128 = nn.ConvTranspose2d(w64, w128, 2, stride=2)
        self.fuse128 = _block(2 * w128, w128)
        self.up256 = nn.ConvTranspose2d(w128, w256, 2, stride=2)
        self.fuse256 = _block(2 * w256, w256)
        self.up512 = nn.ConvTranspose2d(w256, w512, 2, stride=2)
        self.fuse512 = _block(2 * w512, w512)
        self.out = nn.Conv2d(w512, len(MAP_NAMES), 1)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1),
                             persistent=False)

    def normalise(self, images: Tensor) -> Tensor:
        """(B, S, S, 3) uint8 RGB HR crops (S = 1024, or 512 already area-averaged) ->
        (B, 3, 512, 512) normalised."""
        x = images.permute(0, 3, 1, 2).float()
        if x.shape[-1] != OUTPUT_SIZE:
            x = F.avg_pool2d(x, x.shape[-1] // OUTPUT_SIZE)
        mean, std = self.get_buffer("pixel_mean"), self.get_buffer("pixel_std")
        return (x - mean) / std

    def forward(self, hr: EncoderOutput, lr: EncoderOutput | None, images: Tensor,
                window: tuple[int, int, int] | None = None) -> Tensor:
        """hr, lr: (B,256,64,64) embeddings and (B,160,64,64) early features of the HR and
        LR crops; images: (B,1024,1024,3) uint8 HR crops (or (B,512,512,3) area-averaged).
        Returns (B,3,512,512) float32: foreground logits and the two distance maps' logits.

        window: (row, col, side) on the 64x64 feature grid: decode only that square (the
        maps of its (8 side)² output pixels); training on windows costs a fraction of the
        whole crop, and the convolutions see the same features either way."""
        parts = [hr.embedding.float(), hr.early.float()]
        if self.context is not None:
            if lr is None:
                raise ValueError("this instance decoder reads the LR context crop; give lr")
            parts.append(_centre_on_hr_grid(lr.embedding.float()))
        features = torch.cat(parts, dim=1)
        pixels = self.normalise(images)
        if window is not None:
            row, col, side = window
            scale = OUTPUT_SIZE // features.shape[-1]
            features = features[..., row:row + side, col:col + side]
            pixels = pixels[..., row * scale:(row + side) * scale,
                            col * scale:(col + side) * scale]
        x = self.inputs(features)
        if self.context is not None and lr is not None:
            x = x + self.context(lr.embedding.float().mean(dim=(2, 3)))[:, :, None, None]
        s512 = self.stem512(pixels)
        s256 = self.stem256(s512)
        s128 = self.stem128(s256)
        x = self.fuse128(torch.cat([self.up128(x), s128], dim=1))
        x = self.fuse256(torch.cat([self.up256(x), s256], dim=1))
        x = self.fuse512(torch.cat([self.up512(x), s512], dim=1))
        return self.out(x)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _centre_on_hr_grid(lr_embedding: Tensor) -> Tensor:
    """The LR embedding's centre half (where the HR field lies: the LR crop has twice the HR
    crop's pixel size and the same centre), resized onto the HR embedding's 64x64 grid."""
    size = lr_embedding.shape[-1]
    lo, hi = size // 4, size - size // 4
    return F.interpolate(lr_embedding[..., lo:hi, lo:hi], size=(size, size), mode="bilinear",
                         align_corners=False)


def maps_from_logits(logits: Tensor) -> Tensor:
    """(B,3,H,W) decoder output -> (B,3,H,W) in 0..1: foreground probability and the two
    distances."""
    return torch.sigmoid(logits)
