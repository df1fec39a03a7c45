"""Prompt arrays of one crop pair: checks, and the mapping of HR prompts into the LR crop.

Coordinates are crop pixels, (x, y), pixel i covering [i, i + 1); boxes XYXY. Pure numpy but
for the mask warp (torch's grid_sample).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PromptError
from ..scale import CROP_SIZE as CROP
from ..scale import LOW_RES, LR_FACTOR
from .wsi_sam import Prompts

MASK_FILL = -20.0
"""Logit given to mask-prompt pixels that fall outside the HR crop when mapped into the LR crop."""

XYMap = Callable[[np.ndarray], np.ndarray]


def concentric_hr_to_lr(xy: np.ndarray, *, size: int = CROP, factor: float = LR_FACTOR
                        ) -> np.ndarray:
    """(..., 2) (x, y) HR-crop pixels -> LR-crop pixels for concentric crops, LR `factor`x coarser.

    For 1024 crops and factor 2: ``lr = hr / 2 + 256`` (the reference code's box mapping).
    """
    return np.asarray(xy, dtype=np.float64) / factor + size * (1.0 - 1.0 / factor) / 2.0



def prompt_arrays(boxes, points, labels, masks, *, role: str) -> dict:
    """Check and convert the prompts of one crop; the 'n' entry is range(N)."""
    out: dict = {"boxes": None, "points": None, "labels": None, "masks": None}
    sizes = set()
    if boxes is not None:
        out["boxes"] = _finite(boxes, "boxes", role, ndim=2, last=4)
        sizes.add(len(out["boxes"]))
    if points is not None:
        out["points"] = _finite(points, "points", role, ndim=3, last=2)
        if labels is None:
            raise PromptError(f"{role} points need point_labels (N,K): 1 object, 0 background")
        out["labels"] = np.asarray(labels).astype(np.int64)
        if out["labels"].shape != out["points"].shape[:2]:
            raise PromptError(f"{role} point_labels have shape {out['labels'].shape}, "
                              f"expected {out['points'].shape[:2]}")
        sizes.add(len(out["points"]))
    if masks is not None:
        out["masks"] = _finite(masks, "mask_prompts", role, ndim=3, last=LOW_RES)
        sizes.add(len(out["masks"]))
    if not sizes:
        raise PromptError(f"no {role} prompt: give boxes, points or mask_prompts")
    if len(sizes) != 1 or 0 in sizes:
        raise PromptError(f"{role} prompts disagree on their number or are empty: {sorted(sizes)}")
    out["n"] = range(sizes.pop())
    return out


def _finite(value, name: str, role: str, *, ndim: int, last: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32)
    if array.ndim != ndim or array.shape[-1] != last:
        raise PromptError(f"{role} {name} must have {ndim} dimensions ending in {last}, "
                          f"got shape {array.shape}")
    if not np.isfinite(array).all():
        raise PromptError(f"{role} {name} contain NaN or infinite values")
    return array


def lr_prompts(hr: dict, boxes, points, masks, hr_to_lr: XYMap) -> dict:
    """LR prompts: the given ones, else the HR ones mapped with `hr_to_lr`."""
    if boxes is None and hr["boxes"] is not None:
        corners = hr_to_lr(hr["boxes"].reshape(-1, 2, 2)).reshape(-1, 4)
        boxes = np.concatenate([corners[:, :2].clip(max=corners[:, 2:]),
                                corners[:, 2:].clip(min=corners[:, :2])], axis=1)
    if points is None and hr["points"] is not None:
        points = hr_to_lr(hr["points"])
    if masks is None and hr["masks"] is not None:
        masks = map_masks(hr["masks"], hr_to_lr)
    labels = hr["labels"] if points is not None else None
    lr = prompt_arrays(boxes, points, labels, masks, role="LR")
    if len(lr["n"]) != len(hr["n"]):
        raise PromptError(f"{len(hr['n'])} HR prompts but {len(lr['n'])} LR prompts")
    return lr


def map_masks(masks: np.ndarray, hr_to_lr: XYMap) -> np.ndarray:
    """(N,256,256) HR mask logits -> the same over the LR crop (affine warp, MASK_FILL outside)."""
    base = hr_to_lr(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    forward = np.stack([base[1] - base[0], base[2] - base[0]], axis=1)  # lr = A hr + t
    inverse = np.linalg.inv(forward)
    shift = -inverse @ base[0]  # hr = inverse lr + shift
    half = CROP / 2.0  # normalised coordinates u in [-1, 1]: pixel = half * (u + 1)
    theta = np.concatenate([inverse, (inverse @ np.ones(2) + shift / half - 1)[:, None]], axis=1)
    x = torch.as_tensor(masks, dtype=torch.float32)[:, None] - MASK_FILL
    grid = F.affine_grid(torch.as_tensor(theta, dtype=torch.float32)[None].expand(len(x), 2, 3),
                         list(x.shape), align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (warped[:, 0] + MASK_FILL).numpy()


def to_prompts(prompts: dict, start: int = 0, stop: int | None = None, *, scale: float = 1.0,
               device: torch.device | str = "cpu") -> Prompts:
    """Prompts [start, stop) of a `prompt_arrays` dict as tensors in encoder-input pixels.

    Our coordinates put pixel i on [i, i + 1); SAM's prompt encoder takes pixel indices (it
    adds 0.5 itself), so coordinates are scaled to the encoder input, then moved by -0.5.
    Inference and training both convert here, so they feed the decoder identically.
    """
    stop = len(prompts["n"]) if stop is None else stop

    def get(name: str, dtype: torch.dtype, shift: bool = False) -> torch.Tensor | None:
        value = prompts[name]
        if value is None:
            return None
        value = value[start:stop]
        if shift:
            value = value * scale - 0.5
        return torch.as_tensor(value, dtype=dtype, device=device)

    masks = get("masks", torch.float32)
    return Prompts(boxes=get("boxes", torch.float32, True),
                   points=get("points", torch.float32, True),
                   labels=get("labels", torch.int64),
                   masks=None if masks is None else masks[:, None])
