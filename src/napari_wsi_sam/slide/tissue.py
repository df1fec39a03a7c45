"""Where the tissue is: a coarse mask from a thumbnail, for work that should skip bare glass.

The thumbnail is the finest level at most `THUMBNAIL_SIDE` px on its longer side (the
pyramid's virtual levels guarantee one); tissue is darker and more coloured than glass, so
Otsu's threshold on "darkness + saturation" splits the two, and specks smaller than
`MIN_SPECK_PX` thumbnail pixels are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_objects

from .reader import Slide

THUMBNAIL_SIDE = 2048
MIN_SPECK_PX = 16
MIN_CONTRAST = 8.0
"""A thumbnail whose darkness + saturation varies less than this (0..510) is all one thing:
all tissue when it is dark or coloured, all glass when it is bright and grey."""


@dataclass(frozen=True)
class TissueMask:
    """``mask`` (h, w) bool over the slide, each pixel `scale` (sx, sy) level-0 px."""

    mask: np.ndarray
    scale: tuple[float, float]

    def any_in(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """Whether tissue lies in the level-0 box [x0, x1) x [y0, y1)."""
        sx, sy = self.scale
        h, w = self.mask.shape
        c0, c1 = max(int(x0 // sx), 0), min(int(np.ceil(x1 / sx)), w)
        r0, r1 = max(int(y0 // sy), 0), min(int(np.ceil(y1 / sy)), h)
        return c1 > c0 and r1 > r0 and bool(self.mask[r0:r1, c0:c1].any())

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def tissue_mask(slide: Slide) -> TissueMask:
    """The slide's tissue at thumbnail resolution."""
    level = next((i for i, (w, h) in enumerate(slide.level_dimensions)
                  if max(w, h) <= THUMBNAIL_SIDE), slide.level_count - 1)
    w, h = slide.level_dimensions[level]
    rgb = slide.read_window(level, x0=0, y0=0, x1=w, y1=h).astype(np.float32)
    darkness = 255.0 - rgb.mean(axis=2)
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    score = darkness + saturation
    if float(score.max() - score.min()) < MIN_CONTRAST:
        mask = np.full(score.shape, float(score.mean()) > 40.0)
    else:
        mask = score > threshold_otsu(score)
        mask = remove_small_objects(mask, max_size=MIN_SPECK_PX)
    sx, sy = slide.level_scale(level)
    return TissueMask(mask, (float(sx), float(sy)))
