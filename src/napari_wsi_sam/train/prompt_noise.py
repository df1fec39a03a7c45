"""Prompts drawn from a ground-truth mask, the way a person would give them, with seeded noise.

Training and evaluation draw from the same functions (evaluation with its own seeds), so a
model is tested on the kind of prompt it learnt from. All coordinates are HR-crop pixels,
(x, y), pixel i covering [i, i + 1); boxes XYXY. Masks come as a tight window: ``mask`` (h, w)
bool whose pixel [0, 0] is crop pixel (x0, y0). No torch here.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

from ..scale import CROP_SIZE
from ..windows import WindowMask

PromptKind = Literal["box", "points", "mask"]
PROMPT_KINDS: tuple[PromptKind, ...] = ("box", "points", "mask")

BOX_SHIFT = 0.10
"""A noisy box's centre moves by up to this fraction of the box's width / height."""
BOX_SCALE = 0.20
"""A noisy box's width and height change by up to this fraction."""


def noisy_box(box: np.ndarray, rng: np.random.Generator, *, shift: float = BOX_SHIFT,
              scale: float = BOX_SCALE) -> np.ndarray:
    """`box` with its centre moved by up to ±`shift` of its size and its width and height
    scaled by up to ±`scale` (uniform), as the WSI-SAM reference code simulates a hand-drawn box.
    """
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64)
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2 + rng.uniform(-shift, shift) * w
    cy = (y0 + y1) / 2 + rng.uniform(-shift, shift) * h
    w *= 1 + rng.uniform(-scale, scale)
    h *= 1 + rng.uniform(-scale, scale)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def point_order(window: WindowMask, rng: np.random.Generator) -> np.ndarray:
    """All object pixels' centres (M, 2) in a random order; the first k are "k random points".

    Taking prefixes of one order makes the 3 points a subset of the 5, as a person adding
    clicks would.
    """
    ys, xs = np.nonzero(window.mask)
    order = rng.permutation(len(xs))
    x0, y0 = window.origin
    return np.stack([xs[order] + x0 + 0.5, ys[order] + y0 + 0.5], axis=1)


def sample_points(window: WindowMask, k: int, rng: np.random.Generator) -> np.ndarray:
    """`k` positive points (k, 2) drawn uniformly from the object's pixels (repeats only when
    the object has fewer than k pixels)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order = point_order(window, rng)
    if len(order) == 0:
        raise ValueError("cannot draw points from an empty mask")
    return order[np.arange(k) % len(order)]


def noisy_mask_logits(window: WindowMask, rng: np.random.Generator, *, size: int = CROP_SIZE,
                      low_res: int = 256, sigma: float = 1.5, noise: float = 0.35,
                      logit: float = 8.0) -> np.ndarray:
    """A coarse mask prompt (low_res, low_res) float32 logits: the object's mask at the
    decoder's mask resolution, its boundary degraded by smoothed Gaussian noise (as the paper
    makes its "coarse masks"), scaled to ±`logit`."""
    dense = window.dense(size).astype(np.float32)
    factor = size // low_res
    coarse = dense.reshape(low_res, factor, low_res, factor).mean(axis=(1, 3))
    soft = ndimage.gaussian_filter(coarse, sigma)
    field = ndimage.gaussian_filter(rng.normal(0.0, 1.0, coarse.shape).astype(np.float32), sigma)
    field *= noise / max(float(field.std()), 1e-6)
    band = 4.0 * soft * (1.0 - soft)  # 1 on the boundary, 0 far from it
    noisy = soft + band * field
    return np.where(noisy > 0.5, logit, -logit).astype(np.float32)
