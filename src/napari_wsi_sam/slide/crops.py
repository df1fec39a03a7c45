"""Concentric HR/LR crops at a target pixel size, and exact maps between crop and slide.

Convention (the same everywhere in the package): continuous pixel coordinates, x then y,
pixel ``(col i, row j)`` covers ``[i, i + 1) x [j, j + 1)``; its centre is ``(i + 0.5, j + 0.5)``.
A crop is an axis-aligned affine view of level 0::

    crop_xy = (slide_xy - origin) / scale        slide_xy = crop_xy * scale + origin

``origin`` is the level-0 position of the crop's corner (0, 0) and ``scale = crop mpp / slide
mpp`` (level-0 pixels per crop pixel, per axis). For concentric crops of size ``S`` with LR
factor ``f``: ``lr_xy = hr_xy / f + S * (1 - 1 / f) / 2`` (``box / 2 + 256`` for S = 1024, f = 2).

The crop is read at the finest level not coarser than its mpp (only the tiles under the
window are decoded) and resampled in one step by exact area averaging: each crop pixel is the
mean of the source pixels under its footprint, partial pixels weighted by overlap. When that
level is virtual (built by the reader from the file's coarsest native level), its native
source level is read instead: the same tiles are decoded, and one resampling step instead of
two (2x2 average, then a fractional resample) keeps the crop sharp and the geometry exact.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy import sparse

from ..errors import PromptError, SlideError
from ..prompts import Prompt
from ..scale import CROP_SIZE, DEFAULT_HR_MPP, LR_FACTOR
from .cropmap import CropMap
from .reader import Slide

logger = logging.getLogger(__name__)

__all__ = [
    "Crop",
    "CropMap",
    "CropPair",
    "check_hr_mpp",
    "concentric_crops",
    "cut_crop",
    "fit_prompt",
]

_BAND_ROWS = 1024
MIN_HR_MPP, MAX_HR_MPP = 0.05, 16.0
"""HR pixel sizes a crop may have, µm/px: from beyond 100x to 0.6x (a crop of about 13 mm)."""
MIN_CROP, MAX_CROP = 16, 4096
MAX_LR_FACTOR = 8.0


def check_hr_mpp(hr_mpp: object) -> float:
    """An HR pixel size in the sane range, or a one-line SlideError naming the range."""
    if not (isinstance(hr_mpp, int | float) and math.isfinite(hr_mpp)
            and MIN_HR_MPP <= hr_mpp <= MAX_HR_MPP):
        raise SlideError(f"the HR pixel size must be {MIN_HR_MPP:g}..{MAX_HR_MPP:g} µm/px "
                         f"(40x is 0.25, 10x is 1.0), got {hr_mpp!r}")
    return float(hr_mpp)


@dataclass(frozen=True, eq=False)
class Crop:
    """One square crop whose pixels are read when first asked for, so a crop whose encoder
    outputs are already stored (precomputed, or cached) costs no slide read at all.

    image : (S, S, 3) uint8 RGB, read on first access while the slide is open. valid : (S, S)
    bool, True where the pixel centre lies on the slide (False on padding). map : `CropMap`
    between crop and level-0 pixels. mpp : µm per crop pixel. level : the finest pyramid level
    not coarser than `mpp`. source_level : the level whose pixels are decoded (`level` itself,
    or for a virtual level its native source). read : returns the pixels.
    """

    valid: np.ndarray
    map: CropMap
    mpp: float
    level: int
    source_level: int
    read: Callable[[], np.ndarray] = field(repr=False)

    @cached_property
    def image(self) -> np.ndarray:
        return self.read()

    def load(self) -> np.ndarray:
        """The pixels (read once); a function to hand to whatever may not need them."""
        return self.image

    @property
    def valid_fraction(self) -> float:
        """Share of crop pixels on the slide (1.0 when no padding)."""
        return float(self.valid.mean())

    def to_dict(self) -> dict:
        return {"mpp": self.mpp, "level": self.level, "source_level": self.source_level,
                "valid_fraction": self.valid_fraction,
                "padding_fraction": 1.0 - self.valid_fraction, "map": self.map.to_dict()}


@dataclass(frozen=True, eq=False)
class CropPair:
    """HR and LR crops sharing a centre; ``hr_mpp`` may exceed ``hr_mpp_requested`` when the
    prompt did not fit the HR field of view with the margin."""

    hr: Crop
    lr: Crop
    hr_mpp_requested: float
    hr_mpp: float
    center: tuple[float, float]
    lr_factor: float
    margin: float

    @property
    def mpp_raised(self) -> bool:
        return bool(self.hr_mpp > self.hr_mpp_requested * (1 + 1e-9))

    def hr_to_lr(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) HR-crop coordinates -> LR-crop coordinates of the same shape."""
        xy = np.asarray(xy, dtype=float)
        return self.lr.map.to_crop(self.hr.map.to_slide(xy)).reshape(xy.shape)

    def to_dict(self) -> dict:
        return {"center": [float(v) for v in self.center],
                "hr_mpp_requested": self.hr_mpp_requested,
                "hr_mpp": self.hr_mpp, "mpp_raised": self.mpp_raised,
                "lr_factor": self.lr_factor, "margin": self.margin,
                "hr": self.hr.to_dict(), "lr": self.lr.to_dict()}


def concentric_crops(
    slide: Slide,
    prompt: Prompt,
    *,
    hr_mpp: float = DEFAULT_HR_MPP,
    size: int = CROP_SIZE,
    lr_factor: float = LR_FACTOR,
    margin: float = 0.1,
    center: tuple[float, float] | None = None,
    pad_value: int = 255,
    lazy: bool = False,
) -> CropPair:
    """HR crop at `hr_mpp` µm/px and LR crop at ``hr_mpp * lr_factor``, both `size` x `size`,
    centred on the prompt (its bounds' centre) or on `center` (level-0 x, y).

    The prompt's bounds must lie at least ``margin * size`` HR pixels inside every edge; when
    they do not, the HR mpp is raised until they do (logged, recorded in ``CropPair.hr_mpp``).
    Padding beyond the slide is `pad_value` and False in ``valid``. With `lazy`, pixels are
    read when first used, so crops whose embeddings are stored are never read.

    Raises MppMissingError when the slide has no pixel size, PromptError when the prompt lies
    wholly outside the slide, SlideError for settings out of range or unreadable pixels.
    """
    _check_settings(hr_mpp=hr_mpp, size=size, lr_factor=lr_factor, margin=margin)
    mpp_x, mpp_y = slide.require_mpp()
    prompt = fit_prompt(slide, prompt)
    cx, cy = (float(v) for v in (prompt.center() if center is None else center))
    if not (math.isfinite(cx) and math.isfinite(cy)):
        raise PromptError(f"crop centre must be finite level-0 x, y; got {center!r}")
    x0, y0, x1, y1 = prompt.bounds()
    half_x, half_y = max(abs(x0 - cx), abs(x1 - cx)), max(abs(y0 - cy), abs(y1 - cy))
    usable = (0.5 - margin) * size
    needed = float(max(half_x * mpp_x, half_y * mpp_y) / usable)
    used = max(float(hr_mpp), needed)
    if used > MAX_HR_MPP:
        fits = usable * 2 * MAX_HR_MPP / 1000
        raise PromptError(f"the prompt spans {2 * half_x * mpp_x / 1000:.1f} x "
                          f"{2 * half_y * mpp_y / 1000:.1f} mm; one crop holds at most about "
                          f"{fits:.0f} mm: draw a smaller box, or several")
    if used > hr_mpp:
        logger.info("prompt spans %.0f x %.0f µm, too large for a %d px crop at %.4g µm/px with "
                    "%.0f%% margin; using %.4g µm/px", 2 * half_x * mpp_x, 2 * half_y * mpp_y,
                    size, hr_mpp, margin * 100, used)
    hr = cut_crop(slide, (cx, cy), mpp=used, size=size, pad_value=pad_value, lazy=lazy)
    lr = cut_crop(slide, (cx, cy), mpp=used * lr_factor, size=size, pad_value=pad_value,
                  lazy=lazy)
    return CropPair(hr=hr, lr=lr, hr_mpp_requested=float(hr_mpp), hr_mpp=used, center=(cx, cy),
                    lr_factor=float(lr_factor), margin=float(margin))


def fit_prompt(slide: Slide, prompt: Prompt) -> Prompt:
    """The prompt as the model can use it on this slide, or a one-line PromptError.

    A box reaching past the slide's edges is cut to the slide; a prompt wholly off the slide,
    a point off the slide, and a point far from its box (more than the box's own size away:
    it would stretch the crop to no purpose) are refused, each saying why.
    """
    width, height = slide.dimensions
    if prompt.is_outside(width, height):
        raise PromptError(f"{prompt.describe()} lies entirely outside the {width}x{height} px "
                          f"slide {slide.path.name}; prompts are level-0 pixels (x, y)")
    for x, y in prompt.points:
        if not (0 <= x < width and 0 <= y < height):
            raise PromptError(f"point ({x:g}, {y:g}) lies outside the {width}x{height} px slide "
                              f"{slide.path.name}; click on the slide")
    box = prompt.box
    if box is None:
        return prompt
    x0, y0, x1, y1 = (float(v) for v in box)
    reach_x, reach_y = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    for x, y in prompt.points:
        if not (x0 - reach_x <= x <= x1 + reach_x and y0 - reach_y <= y <= y1 + reach_y):
            raise PromptError(f"point ({x:g}, {y:g}) lies far outside its box "
                              f"[{x0:g}, {y0:g}, {x1:g}, {y1:g}]; refining points go on or "
                              "next to the object")
    clipped = np.array([max(x0, 0.0), max(y0, 0.0), min(x1, float(width)),
                        min(y1, float(height))])
    if np.array_equal(clipped, box):
        return prompt
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        raise PromptError(f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] only touches the edge of the "
                          f"{width}x{height} px slide {slide.path.name}")
    logger.info("box %s cut to the slide: %s", box.tolist(), clipped.tolist())
    return Prompt(box=clipped, points=prompt.points, labels=prompt.labels)


def cut_crop(slide: Slide, center: tuple[float, float], *, mpp: float, size: int = CROP_SIZE,
             pad_value: int = 255, lazy: bool = False) -> Crop:
    """One `size` x `size` crop at `mpp` µm/px centred on level-0 `center` (x, y); with
    `lazy`, its pixels are read on first use (which must come while the slide is open)."""
    cmap = crop_map(slide, center, mpp=mpp, size=size)
    level = slide.best_level_for_mpp(mpp)
    source = min(level, slide.native_level_count - 1)
    valid = _valid_mask(cmap, slide.dimensions)

    def read() -> np.ndarray:
        image = _resample(slide, source, cmap)
        if not valid.all():
            image[~valid] = pad_value
        return image

    crop = Crop(valid=valid, map=cmap, mpp=float(mpp), level=level, source_level=source,
                read=read)
    if not lazy:
        crop.load()
    return crop


def crop_map(slide: Slide, center: tuple[float, float], *, mpp: float, size: int = CROP_SIZE
             ) -> CropMap:
    """The map of the `size` x `size` crop at `mpp` µm/px centred on level-0 `center`, without
    reading pixels (training rasterises annotations through it)."""
    mpp_x, mpp_y = slide.require_mpp()
    scale = (mpp / mpp_x, mpp / mpp_y)
    origin = (center[0] - size * scale[0] / 2.0, center[1] - size * scale[1] / 2.0)
    return CropMap(origin=origin, scale=scale, size=(size, size))


def _resample(slide: Slide, level: int, cmap: CropMap) -> np.ndarray:
    """Crop pixels by exact area averaging over each crop pixel's footprint on `level`.

    Separable: rows then columns, each a sparse (crop px x source px) weight matrix whose row
    holds the overlap of one crop pixel with the source pixels (tent weights when
    upsampling). The window is read in bands of whole chunk rows to bound memory, and each
    band's rows are reduced as soon as it is read.
    """
    lx, ly = slide.level_scale(level)
    size_x, size_y = cmap.size
    wx, x0, x1 = _weights(size_x, cmap.scale[0] / lx, cmap.origin[0] / lx)
    wy, y0, y1 = _weights(size_y, cmap.scale[1] / ly, cmap.origin[1] / ly)
    wy = wy.tocsc()
    rows = np.zeros((size_y, (x1 - x0) * 3), np.float32)
    for r0, r1 in _bands(slide, level, y0, y1):
        band = slide.read_window(level, x0=x0, y0=r0, x1=x1, y1=r1, pad="edge")
        rows += wy[:, r0 - y0:r1 - y0] @ band.reshape(r1 - r0, -1).astype(np.float32)
    flat = rows.reshape(size_y, x1 - x0, 3).transpose(1, 0, 2).reshape(x1 - x0, -1)
    out = (wx @ flat).reshape(size_x, size_y, 3).transpose(1, 0, 2)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _weights(n_out: int, a: float, b: float) -> tuple[sparse.csr_matrix, int, int]:
    """Sparse (n_out, stop - start) weights of output pixel j over source pixels start:stop.

    Output pixel j covers source coordinates ``[b + a j, b + a (j + 1))``. For ``a >= 1``
    each weight is the overlap with source pixel i (``[i, i + 1)``) divided by ``a``; for
    ``a < 1`` linear interpolation at the footprint centre (source centres at ``i + 0.5``).
    """
    j = np.arange(n_out, dtype=np.float64)
    if a >= 1.0:
        lo = b + a * j
        hi = lo + a
        idx = np.floor(lo)[:, None].astype(np.int64) + np.arange(math.ceil(a) + 1)[None, :]
        w = np.clip(np.minimum(hi[:, None], idx + 1) - np.maximum(lo[:, None], idx), 0, None) / a
    else:
        m = b + a * (j + 0.5) - 0.5
        i0 = np.floor(m).astype(np.int64)
        t = m - i0
        idx = np.stack([i0, i0 + 1], axis=1)
        w = np.stack([1.0 - t, t], axis=1)
    keep = w > 1e-12
    start, stop = int(idx[keep].min()), int(idx[keep].max()) + 1
    rows = np.broadcast_to(np.arange(n_out)[:, None], idx.shape)[keep]
    matrix = sparse.csr_matrix((w[keep].astype(np.float32), (rows, idx[keep] - start)),
                               shape=(n_out, stop - start))
    return matrix, start, stop


def _bands(slide: Slide, level: int, y0: int, y1: int) -> list[tuple[int, int]]:
    """Row bands y0:y1 cut at chunk boundaries of `level`, about `_BAND_ROWS` rows each."""
    chunk = int(slide.levels[level].chunksize[0]) or _BAND_ROWS
    step = chunk * max(1, _BAND_ROWS // chunk)
    edges = [y0, *range((y0 // step + 1) * step, y1, step), y1]
    return list(itertools.pairwise(edges))


def _valid_mask(cmap: CropMap, dimensions: tuple[int, int]) -> np.ndarray:
    """True where a crop pixel's centre falls on the slide's level 0."""
    width, height = dimensions
    cols = cmap.origin[0] + (np.arange(cmap.size[0]) + 0.5) * cmap.scale[0]
    rows = cmap.origin[1] + (np.arange(cmap.size[1]) + 0.5) * cmap.scale[1]
    return ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]


def _check_settings(*, hr_mpp: float, size: int, lr_factor: float, margin: float) -> None:
    check_hr_mpp(hr_mpp)
    if not (isinstance(size, int | np.integer) and MIN_CROP <= size <= MAX_CROP):
        raise SlideError(f"crop size must be a whole number of {MIN_CROP}..{MAX_CROP} px, "
                         f"got {size!r}")
    if not (math.isfinite(lr_factor) and 1 <= lr_factor <= MAX_LR_FACTOR):
        raise SlideError(f"LR factor must be a number in 1..{MAX_LR_FACTOR:g}, got "
                         f"{lr_factor!r}")
    if not (0 <= margin < 0.5):
        raise SlideError(f"margin must be a fraction in [0, 0.5), got {margin!r}")
