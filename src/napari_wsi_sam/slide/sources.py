"""Turn a file into native levels and metadata: TIFF slides via tifffile + zarr, images via Pillow.

`open_source` returns an `Opened`; `reader.open_slide` adds virtual levels and builds the
`Slide`. Every failure a user can cause (missing, directory, empty, not an image, corrupt,
truncated) becomes a one-line `SlideError` naming the file and what to do.
"""

from __future__ import annotations

import logging
import re
import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import dask.array as da
import numpy as np
import tifffile
import zarr

from ..errors import SlideError, one_line
from .metadata import read_metadata
from .pyramid import to_rgb8, value_scale

logger = logging.getLogger(__name__)

TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
ASSOCIATED_NAMES = {"thumbnail", "label", "macro", "map", "overview"}
READ_ERRORS = (tifffile.TiffFileError, OSError, ValueError, RuntimeError, KeyError,
               IndexError, TypeError, ArithmeticError, struct.error, zarr.errors.BaseZarrError)
"""What tifffile, zarr and the codecs raise on damaged bytes (found by fuzzing the test
slides: a zero RowsPerStrip divides by zero, a bad offset overflows)."""
_SAMPLE_LIMIT = 4096 * 4096
_PROBE_IMAGE_LIMIT = 50_000_000
MAX_CHUNK_BYTES = 1 << 30
"""A tile or strip is decoded whole on every read: larger ones are refused at open (a 132-byte
TIFF can claim a single 1 TB strip)."""
_RETILE = "re-export it as a tiled TIFF, e.g. `vips tiffsave IN OUT.tif --tile --pyramid`"
_FIX = "check that the file is a complete, uncorrupted slide (re-copy or re-export it)"


@dataclass
class Opened:
    """Native levels and metadata of an opened file (before virtual levels)."""

    levels: list[da.Array]
    scales: list[tuple[float, float]]
    vendor: str
    mpp: tuple[float, float] | None = None
    objective_power: float | None = None
    associated: dict[str, da.Array] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)


def open_source(path: Path) -> Opened:
    """Open `path` as a TIFF slide when it starts with a TIFF header, else as a plain image."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as err:
        raise SlideError(f"{path} cannot be read ({err.strerror}); check its permissions") from err
    if head in TIFF_MAGIC:
        return _open_tiff(path)
    return _open_image(path)


# -- TIFF ------------------------------------------------------------------------------------
def _open_tiff(path: Path) -> Opened:
    try:
        tif = tifffile.TiffFile(path)
    except READ_ERRORS as err:
        raise SlideError(f"{path} is not a readable TIFF ({_short(err)}); {_FIX}") from err
    closers: list[Callable[[], None]] = [tif.close]
    try:
        opened = _tiff_levels(tif, path, closers)
        probe(opened.levels[-1], path)
    except SlideError:
        _close_all(closers)
        raise
    except READ_ERRORS as err:
        _close_all(closers)
        raise SlideError(f"{path} cannot be read as a slide ({_short(err)}); {_FIX}") from err
    return opened


def _tiff_levels(tif: tifffile.TiffFile, path: Path, closers: list) -> Opened:
    series = list(tif.series)
    if not series:
        raise SlideError(f"{path} holds no images; {_FIX}")
    main_index = max(
        (i for i, s in enumerate(series) if s.name.lower() not in ASSOCIATED_NAMES),
        key=lambda i: _area(series[i]), default=0,
    )
    main = series[main_index]
    level_series = list(main.levels)
    stores = [(main, i) for i in range(len(level_series))]
    used = {main_index}
    if len(level_series) == 1:
        extra = _pages_as_levels(series, main_index)
        level_series += [series[i] for i in extra]
        stores += [(series[i], 0) for i in extra]
        used.update(extra)
    meta = read_metadata(tif, main.keyframe)
    file_size = path.stat().st_size
    for lvl in level_series:
        _check_not_truncated(lvl, file_size, path)
    raw = [_dask_of(owner, closers, level=i) for owner, i in stores]
    for arr in raw:
        check_chunks(arr, path)
    name = path.name
    factor = value_factor(raw[-1], level_series[-1].axes)
    levels = [to_rgb8(a, s.axes, scale=factor, name=name, log=i == 0)
              for i, (a, s) in enumerate(zip(raw, level_series, strict=True))]
    if any(0 in a.shape[:2] for a in levels):
        raise SlideError(f"{path} claims an image of 0 pixels; {_FIX}")
    h0, w0 = levels[0].shape[:2]
    scales = [(w0 / a.shape[1], h0 / a.shape[0]) for a in levels]
    associated = {}
    for i, s in enumerate(series):
        if i in used:
            continue
        key = s.name.lower() or f"series{i}"
        key = key if key not in associated else f"{key}{i}"
        try:
            arr = _dask_of(s, closers)
            check_chunks(arr, path)
            associated[key] = to_rgb8(arr, s.axes, scale=value_factor(arr, s.axes), name=name)
        except (ValueError, SlideError, *READ_ERRORS) as err:
            logger.warning("%s: skipping associated image %r (%s)", name, key, _short(err))
    return Opened(levels=levels, scales=scales, vendor=meta.vendor, mpp=meta.mpp,
                  objective_power=meta.objective_power, associated=associated,
                  properties=meta.properties, closers=closers)


def _pages_as_levels(series: list, main_index: int) -> list[int]:
    """Other tiled series that look like reduced copies of the main one (same aspect, smaller)."""
    main = series[main_index]
    mh, mw = _yx(main)
    out = []
    for i, s in enumerate(series):
        if i == main_index or s.name.lower() in ASSOCIATED_NAMES or not s.keyframe.is_tiled:
            continue
        h, w = _yx(s)
        if s.axes == main.axes and h < mh and w < mw and abs(w / h - mw / mh) < 0.02 * mw / mh:
            out.append(i)
    return sorted(out, key=lambda i: -_area(series[i]))


def _check_not_truncated(level: tifffile.TiffPageSeries, file_size: int, path: Path) -> None:
    page = level.keyframe
    offsets = np.asarray(page.dataoffsets, dtype=np.uint64)
    counts = np.asarray(page.databytecounts, dtype=np.uint64)
    if offsets.size and int((offsets + counts).max()) > file_size:
        raise SlideError(f"{path} is truncated: image data runs past its end ({file_size} bytes); "
                         "re-copy the complete file")


def _dask_of(s: tifffile.TiffPageSeries, closers: list, *, level: int = 0) -> da.Array:
    store = s.aszarr(level=level)
    closers.append(store.close)
    arr = zarr.open_array(store, mode="r")
    return da.from_zarr(arr)


def check_chunks(arr: da.Array, path: Path) -> None:
    nbytes = int(np.prod(arr.chunksize, dtype=np.float64)) * arr.dtype.itemsize
    if nbytes > MAX_CHUNK_BYTES:
        raise SlideError(f"{path} stores its image in {nbytes / 2**30:.3g} GiB strips or tiles, "
                         f"too large to read piecewise (limit 1 GiB); {_RETILE}")


def value_factor(arr: da.Array, axes: str) -> float | None:
    """Scale for non-uint8 data, from the coarsest level's peak when that level is small."""
    if arr.dtype in (np.uint8, np.bool_):
        return None
    sample = None
    pixels = arr.shape[axes.index("Y")] * arr.shape[axes.index("X")]
    if pixels <= _SAMPLE_LIMIT:
        sample = np.asarray(arr.max().compute(scheduler="threads")).reshape(1)
    return value_scale(arr.dtype, sample)


def probe(level: da.Array, path: Path) -> None:
    """Decode one tile of the coarsest level, so corrupt or unsupported files fail at open."""
    try:
        level[:1, :1].compute(scheduler="threads")
    except READ_ERRORS as err:
        raise SlideError(f"{path} cannot be decoded ({_short(err)}); the file is corrupt or uses "
                         "an unsupported compression; re-export it as tiled JPEG or deflate TIFF"
                         ) from err


# -- plain images ----------------------------------------------------------------------------
def _open_image(path: Path) -> Opened:
    from PIL import Image, UnidentifiedImageError

    try:
        with _quiet_bombs(), Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
    except Image.DecompressionBombError as err:
        raise SlideError(f"{path} is a plain image too large to decode whole "
                         f"({_megapixels(err)}); {_RETILE}") from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise SlideError(f"{path} is neither a slide nor an image file; give an .svs, .tif, "
                         ".ndpi, .mrxs, .scn, .dcm, .ome.zarr, .jpg or .png") from err
    lazy = _LazyImage(path, mode=mode, width=w, height=h)
    arr = da.from_array(lazy, chunks=(1024, 1024, *lazy.shape[2:]), lock=True, asarray=True)
    axes = "YXS" if arr.ndim == 3 else "YX"
    try:
        sample = None if arr.dtype == np.uint8 else lazy.load()
        level = to_rgb8(arr, axes, scale=value_scale(arr.dtype, sample), name=path.name)
    except OSError as err:
        raise SlideError(f"{path} cannot be decoded ({_short(err)}); {_FIX}") from err
    if w * h <= _PROBE_IMAGE_LIMIT:  # decoding checks the file; huge images stay lazy
        probe(level, path)
    return Opened(levels=[level], scales=[(1.0, 1.0)], vendor="image", closers=[lazy.release])


class _LazyImage:
    """Array-like over a Pillow image, decoded on first access and kept until released."""

    _MODES: ClassVar[dict[str, tuple[str, type, int]]] = {
        "RGB": ("RGB", np.uint8, 3), "RGBA": ("RGBA", np.uint8, 4), "L": ("L", np.uint8, 0),
              "LA": ("LA", np.uint8, 2), "1": ("L", np.uint8, 0),
        "I;16": ("I;16", np.uint16, 0), "I;16B": ("I;16", np.uint16, 0), "I": ("I", np.int32, 0),
        "F": ("F", np.float32, 0)}

    def __init__(self, path: Path, *, mode: str, width: int, height: int) -> None:
        target, dtype, channels = self._MODES.get(mode, ("RGB", np.uint8, 3))
        if mode == "P":
            target, channels = "RGBA", 4
        self.path, self.mode, self.target = path, mode, target
        self.dtype = np.dtype(dtype)
        self.shape = (height, width, channels) if channels else (height, width)
        self.ndim = len(self.shape)
        self._data: np.ndarray | None = None

    def load(self) -> np.ndarray:
        if self._data is None:
            from PIL import Image

            with _quiet_bombs(), Image.open(self.path) as im:
                keep = im.mode == self.target or self.mode in ("I;16", "I;16B")
                data = np.asarray(im if keep else im.convert(self.target))
            self._data = data.astype(self.dtype, copy=False).reshape(self.shape)
        return self._data

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.load()[key]

    def release(self) -> None:
        self._data = None


# -- helpers ---------------------------------------------------------------------------------
@contextmanager
def _quiet_bombs() -> Iterator[None]:
    """Pillow warns between its soft and hard pixel limits; below the hard one we decode."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _yx(s: tifffile.TiffPageSeries) -> tuple[int, int]:
    return int(s.shape[s.axes.index("Y")]), int(s.shape[s.axes.index("X")])


def _area(s: tifffile.TiffPageSeries) -> int:
    try:
        h, w = _yx(s)
    except ValueError:
        return 0
    return h * w


def _megapixels(err: BaseException) -> str:
    """'900 megapixels, limit 179' from Pillow's decompression-bomb message."""
    sizes = [int(n) for n in re.findall(r"\d{4,}", str(err))]
    if len(sizes) != 2:
        return _short(err)
    return f"{sizes[0] / 1e6:.0f} megapixels, limit {sizes[1] / 1e6:.0f}"


def _short(err: BaseException) -> str:
    return one_line(err, 160)


def _close_all(closers: list[Callable[[], None]]) -> None:
    for closer in reversed(closers):
        closer()
    closers.clear()
