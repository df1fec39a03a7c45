"""Open a whole-slide image as lazy pyramid levels with its pixel size.

The backend is chosen per file (`backends`): tifffile, OpenSlide or zarr for OME-Zarr.
TIFF-based slides (Aperio SVS, OME-TIFF, NDPI, generic tiled or striped TIFF) are read with
tifffile: each level is tifffile's zarr store opened with zarr 3 and wrapped in a dask array
whose chunks are the file's tiles, so slicing a window decodes only the tiles under it. Plain
images (JPEG, PNG, ...) are decoded on first access. Coarser levels the file lacks are built
lazily (`pyramid.add_virtual_levels`).

Coordinates: level-0 pixels, x then y; pixel ``i`` covers ``[i, i + 1)``. Level ``k`` pixel
``(i, j)`` covers level-0 ``[j * sx, (j + 1) * sx) x [i * sy, (i + 1) * sy)`` where
``(sx, sy) = slide.level_scale(k)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import dask.array as da
import numpy as np

from ..errors import MppMissingError, SlideError, one_line
from . import backends, sources
from .pyramid import add_virtual_levels

logger = logging.getLogger(__name__)

MPP_RTOL = 0.01
"""A level counts as "not coarser" than a target mpp when within 1% of it (SVS levels are
often 4.0003x, not 4x)."""

MPP_HELP = "give one with --mpp or the widget's µm/px field"


class Slide:
    """A whole-slide image: lazy RGB levels, their scales, pixel size and associated images.

    Attributes
    ----------
    path : Path of the file.
    levels : list of dask arrays, (Y, X, 3) uint8, finest first; ``levels[0]`` is level 0.
    downsamples : level-0 pixels per level pixel (mean of x and y), ``downsamples[0] == 1``.
    mpp : (x, y) µm per level-0 pixel, or None when neither the file nor the caller gave one.
    objective_power : the scanner's nominal objective (e.g. 20.0), or None.
    vendor : "aperio", "ome", "ndpi", "generic-tiff" or "image" (tifffile); OpenSlide's vendor
        ("mirax", "hamamatsu", "leica", "ventana", "philips", "dicom", ...); "ome-zarr".
    backend : what reads the pixels: "tifffile", "openslide" or "ome-zarr".
    associated : name -> lazy (Y, X, 3) uint8 dask array ("thumbnail", "label", "macro", ...).
    native_level_count : how many of `levels` are in the file; the rest are virtual.
    properties : the file's own key/value metadata (Aperio fields, OME sizes, ...).
    """

    def __init__(
        self,
        path: Path,
        *,
        levels: Sequence[da.Array],
        scales: Sequence[tuple[float, float]],
        mpp: tuple[float, float] | None,
        objective_power: float | None = None,
        vendor: str,
        associated: dict[str, da.Array] | None = None,
        native_level_count: int | None = None,
        properties: dict[str, str] | None = None,
        closers: Sequence[Callable[[], None]] = (),
        backend: str = "tifffile",
    ) -> None:
        if not levels or len(levels) != len(scales):
            raise SlideError(f"{path}: no image levels found; is this a slide?")
        self.path = Path(path)
        self.levels = list(levels)
        self._scales = [(float(sx), float(sy)) for sx, sy in scales]
        self.downsamples = [(sx + sy) / 2.0 for sx, sy in self._scales]
        self.mpp = mpp
        self.objective_power = objective_power
        self.vendor = vendor
        self.associated = dict(associated or {})
        self.native_level_count = native_level_count or len(self.levels)
        self.properties = dict(properties or {})
        self.backend = backend
        self._closers = list(closers)
        self._closed = False

    # -- geometry --------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0 in pixels."""
        h, w = self.levels[0].shape[:2]
        return int(w), int(h)

    @property
    def level_count(self) -> int:
        return len(self.levels)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of every level."""
        return [(int(a.shape[1]), int(a.shape[0])) for a in self.levels]

    def level_scale(self, level: int) -> tuple[float, float]:
        """(sx, sy): level-0 pixels per pixel of `level`, exact, per axis."""
        return self._scales[self._check_level(level)]

    def level_mpp(self, level: int) -> tuple[float, float]:
        """(x, y) µm/px of `level`; raises MppMissingError when the slide has no pixel size."""
        mx, my = self.require_mpp()
        sx, sy = self.level_scale(level)
        return mx * sx, my * sy

    def best_level_for_mpp(self, target: float) -> int:
        """Finest level whose pixels are not coarser than `target` µm/px (1% tolerance).

        Level 0 when `target` is finer than level 0 itself.
        """
        if not (math.isfinite(target) and target > 0):
            raise SlideError(f"target pixel size must be a positive number of µm/px, got {target}")
        best = 0
        for level in range(self.level_count):
            if max(self.level_mpp(level)) <= target * (1.0 + MPP_RTOL):
                best = level
        return best

    # -- pixel size ------------------------------------------------------------------------
    def require_mpp(self) -> tuple[float, float]:
        """(x, y) µm/px, or MppMissingError naming the file and how to give one."""
        if self.mpp is None:
            raise MppMissingError(f"{self.path.name} has no pixel size; {MPP_HELP}")
        return self.mpp

    def with_mpp(self, mpp: float | tuple[float, float] | None) -> Slide:
        """The same slide (sharing its open file) with pixel size `mpp` µm/px (None: the file's)."""
        clone = object.__new__(Slide)
        clone.__dict__.update(self.__dict__)
        clone.mpp = check_mpp(mpp, path=self.path) if mpp is not None else self.mpp
        clone._closers = []  # the original owns the file
        return clone

    # -- reading ---------------------------------------------------------------------------
    def read_window(self, level: int, *, x0: int, y0: int, x1: int, y1: int,
                    pad: str | int = "edge") -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` of `level` as (y1-y0, x1-x0, 3) uint8, padded beyond edges.

        Only the tiles under the window are decoded. `pad` is ``"edge"`` (repeat the nearest
        slide pixel, also for a window wholly outside the slide) or a constant 0-255.
        """
        arr = self.levels[self._check_level(level)]
        h, w = arr.shape[:2]
        if x1 <= x0 or y1 <= y0:
            raise SlideError(f"empty window x {x0}:{x1}, y {y0}:{y1} on level {level}")
        if pad == "edge":  # read the nearest on-slide rows/columns, then repeat them outward
            ry0, rx0 = min(max(y0, 0), h - 1), min(max(x0, 0), w - 1)
            ry1, rx1 = max(min(y1, h), ry0 + 1), max(min(x1, w), rx0 + 1)
            inner = self._compute(level, arr, ry0, ry1, rx0, rx1)
            if (ry0, ry1, rx0, rx1) == (y0, y1, x0, x1):
                return inner
            widths = ((max(ry0 - y0, 0), max(y1 - ry1, 0)), (max(rx0 - x0, 0), max(x1 - rx1, 0)),
                      (0, 0))
            padded = np.pad(inner, widths, mode="edge")
            top, left = max(y0 - ry0, 0), max(x0 - rx0, 0)  # > 0 only for windows past the end
            return padded[top:top + y1 - y0, left:left + x1 - x0]
        out = np.full((y1 - y0, x1 - x0, 3), int(pad), np.uint8)
        cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
        if cy1 > cy0 and cx1 > cx0:
            out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = self._compute(level, arr, cy0, cy1,
                                                                      cx0, cx1)
        return out

    def _compute(self, level: int, arr: da.Array, y0: int, y1: int, x0: int,
                 x1: int) -> np.ndarray:
        try:
            return np.asarray(arr[y0:y1, x0:x1].compute(scheduler="threads"))
        except sources.READ_ERRORS as err:
            raise SlideError(f"{self.path}: could not decode level {level} pixels x {x0}:{x1}, "
                             f"y {y0}:{y1} ({one_line(err)}); the file may be corrupt or "
                             "truncated"
                             ) from err

    # -- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        """Release the file; levels must not be computed afterwards."""
        if self._closed:
            return
        self._closed = True
        for closer in reversed(self._closers):
            closer()
        self._closers.clear()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        mpp = "none" if self.mpp is None else f"{self.mpp[0]:.4g}x{self.mpp[1]:.4g} µm/px"
        return (f"Slide({self.path.name!r}, {w}x{h}, {self.level_count} levels "
                f"({self.native_level_count} native), {mpp}, vendor={self.vendor!r}, "
                f"backend={self.backend!r})")

    def _check_level(self, level: int) -> int:
        if not 0 <= level < len(self.levels):
            raise SlideError(f"level {level} does not exist; {self.path.name} has levels "
                             f"0-{len(self.levels) - 1}")
        return level


def check_mpp(mpp: float | Sequence[float], *, path: Path | str) -> tuple[float, float]:
    """A user-given pixel size as (x, y) µm/px; SlideError unless positive and finite."""
    try:
        values = list(np.broadcast_to(np.asarray(mpp, dtype=float), (2,)) if np.ndim(mpp) == 0
                      else np.asarray(mpp, dtype=float).reshape(-1))
        pair = (float(values[0]), float(values[1]))
    except (TypeError, ValueError, IndexError) as err:
        raise SlideError(f"pixel size for {Path(path).name} must be a number of µm/px, "
                         f"got {mpp!r}") from err
    if len(values) != 2 or not all(math.isfinite(v) and MIN_MPP <= v <= MAX_MPP for v in pair):
        raise SlideError(f"pixel size for {Path(path).name} must be {MIN_MPP:g}..{MAX_MPP:g} "
                         f"µm/px (a 40x scan is about 0.25), got {mpp!r}")
    return pair


MIN_MPP, MAX_MPP = 0.01, 100.0
"""Pixel sizes a user may give a slide, µm/px."""


def open_slide(path: str | Path, *, mpp: float | tuple[float, float] | None = None,
               backend: str = "auto") -> Slide:
    """Open a slide or plain image lazily; `mpp` (µm/px at level 0) overrides the file's.

    `backend` is ``"auto"`` (tifffile where it reads the format, OpenSlide otherwise, zarr
    for OME-Zarr folders; see `backends`) or one of ``"tifffile"``, ``"openslide"``,
    ``"ome-zarr"`` to force it. Raises SlideError (one line naming the file and what to do)
    when the file is missing, empty, not an image, or corrupt.
    """
    path = Path(path).expanduser()
    given = check_mpp(mpp, path=path) if mpp is not None else None
    chosen, opened = backends.open_source(path, backend)
    if given is not None:
        if opened.mpp is not None and not np.allclose(opened.mpp, given, rtol=1e-3):
            logger.info("%s: using the given pixel size %.4g µm/px instead of the file's %.4g",
                        path.name, given[0], opened.mpp[0])
        opened.mpp = given
    levels, scales = list(opened.levels), list(opened.scales)
    native = len(levels)
    added = add_virtual_levels(levels, scales)
    if added:
        logger.info("%s: %d native level(s); added %d virtual level(s) by 2x2 averaging",
                    path.name, native, added)
    slide = Slide(path, levels=levels, scales=scales, mpp=opened.mpp,
                  objective_power=opened.objective_power, vendor=opened.vendor,
                  associated=opened.associated, native_level_count=native,
                  properties=opened.properties, closers=opened.closers, backend=chosen)
    if slide.mpp is None:
        logger.info("%s has no pixel size; %s", path.name, MPP_HELP)
    return slide
