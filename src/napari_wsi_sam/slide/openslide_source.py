"""The OpenSlide backend: vendor formats tifffile does not read (MRXS, VMS/VMU, SCN, BIF,
Philips TIFF) and DICOM WSI, as lazy levels whose tiles are read through ``read_region``.

OpenSlide (``openslide-python`` with the ``openslide-bin`` wheel, no system library) is
imported only here and only when a slide is opened with it. Each level is a dask array whose
chunks are a whole number of the file's tiles; a window calls ``read_region`` once per chunk it
touches, for just the part of the chunk under it (dask fuses the slice into the read).
OpenSlide returns RGBA with alpha 0 outside the scanned area (MRXS, DICOM sparse tiles); such
pixels are shown white, opaque ones are OpenSlide's RGB unchanged.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import openslide

from ..errors import SlideError, one_line
from .metadata import plausible_mpp
from .sources import Opened, check_chunks, probe

CHUNK_TARGET = 512
"""Chunks are the smallest whole number of tiles at least this many pixels on a side."""
_FIX = "check that the file (for DICOM, the whole series folder) is complete and uncorrupted"


class RegionReadError(RuntimeError):
    """OpenSlide failed while reading pixels (a corrupt tile); the slide turns it into one line."""


def open_openslide(path: Path, *, member: Path | None = None) -> Opened:
    """Open `path` with OpenSlide: a slide file, one DICOM file of a series, or a DICOM folder
    (then `member` is one of its files; OpenSlide finds the rest of the series beside it)."""
    try:
        handle = openslide.OpenSlide(str(member or path))
    except openslide.OpenSlideUnsupportedFormatError as err:
        raise SlideError(f"{path} is not a format OpenSlide reads ({one_line(err)}); give an "
                         ".svs, .mrxs, .vms, .scn, .bif, .ndpi, Philips .tiff or DICOM slide"
                         ) from err
    except (openslide.OpenSlideError, OSError, ValueError) as err:
        raise SlideError(f"{path} cannot be opened by OpenSlide ({one_line(err)}); {_FIX}"
                         ) from err
    closers = [handle.close]
    try:
        opened = _levels(handle, path)
        closers = opened.closers  # the guarded close, which waits for reads in flight
        probe(opened.levels[-1], path)
    except (SlideError, openslide.OpenSlideError, RegionReadError, KeyError, ValueError,
            UnicodeError) as err:
        for close in closers:
            close()
        if isinstance(err, SlideError):
            raise
        raise SlideError(f"{path} cannot be decoded by OpenSlide ({one_line(err)}); {_FIX}"
                         ) from err
    return opened


def _levels(handle: openslide.OpenSlide, path: Path) -> Opened:
    props = _properties(handle)
    guard = _Guard(handle)
    levels = []
    for k, (w, h) in enumerate(handle.level_dimensions):
        if w <= 0 or h <= 0:
            raise SlideError(f"{path} claims an image of 0 pixels; {_FIX}")
        tile = (_int(props.get(f"openslide.level[{k}].tile-width")),
                _int(props.get(f"openslide.level[{k}].tile-height")))
        reader = _LevelReader(guard, level=k, width=w, height=h,
                              downsample=float(handle.level_downsamples[k]))
        levels.append(da.from_array(reader, chunks=_chunks(tile), asarray=True,
                                    name=False,  # a random name: the reader does not hash
                                    meta=np.empty((0, 0, 3), np.uint8)))
    for level in levels:
        check_chunks(level, path)
    h0, w0 = levels[0].shape[:2]
    scales = [(w0 / a.shape[1], h0 / a.shape[0]) for a in levels]
    mpp_x, mpp_y = _float(props.get(openslide.PROPERTY_NAME_MPP_X)), _float(
        props.get(openslide.PROPERTY_NAME_MPP_Y))
    mpp = plausible_mpp((mpp_x, mpp_y) if mpp_x and mpp_y else None, source="OpenSlide")
    power = _float(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
    associated = {}
    for name in list(handle.associated_images):  # the mapping decodes on get; keys do not
        aw = _int(props.get(f"openslide.associated.{name}.width"))
        ah = _int(props.get(f"openslide.associated.{name}.height"))
        if aw and ah:
            image = _AssociatedReader(guard, name=name, width=aw, height=ah)
            associated[name] = da.from_array(image, chunks=(ah, aw, 3), asarray=True,
                                             meta=np.empty((0, 0, 3), np.uint8))
    return Opened(levels=levels, scales=scales,
                  vendor=props.get(openslide.PROPERTY_NAME_VENDOR) or "openslide", mpp=mpp,
                  objective_power=power if power and power > 0 else None,
                  associated=associated, properties=props, closers=[guard.close])


def _properties(handle: openslide.OpenSlide) -> dict[str, str]:
    """OpenSlide's properties; a damaged file can list a key whose value it cannot give."""
    out = {}
    for key in list(handle.properties):
        try:
            out[key] = handle.properties[key]
        except (KeyError, UnicodeError):
            continue
    return out


class _Guard:
    """An OpenSlide handle that is closed only when no read is in flight.

    A failed chunk makes dask raise while other chunks are still being read in its worker
    threads; closing the handle under them would free memory OpenSlide is using (a crash, seen
    in the tests). Reads hold the guard; `close` waits for them, and later reads are refused.
    """

    def __init__(self, handle: openslide.OpenSlide) -> None:
        self._handle = handle
        self._idle = threading.Condition()
        self._readers = 0
        self._closed = False

    @contextmanager
    def reading(self) -> Iterator[openslide.OpenSlide]:
        with self._idle:
            if self._closed:
                raise RegionReadError("the slide was closed")
            self._readers += 1
        try:
            yield self._handle
        finally:
            with self._idle:
                self._readers -= 1
                self._idle.notify_all()

    def close(self) -> None:
        with self._idle:
            self._closed = True
            self._idle.wait_for(lambda: self._readers == 0)
            self._handle.close()


class _LevelReader:
    """Array-like (H, W, 3) uint8 over one OpenSlide level; a slice is one ``read_region``."""

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, guard: _Guard, *, level: int, width: int, height: int,
                 downsample: float) -> None:
        self.guard, self.level, self.downsample = guard, level, downsample
        self.shape = (height, width, 3)

    def __getitem__(self, key: Any) -> np.ndarray:
        ys, xs = _window(key, self.shape)
        y0, y1, x0, x1 = ys.start, ys.stop, xs.start, xs.stop
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)
        # read_region takes level-0 coordinates; OpenSlide divides them by the downsample.
        location = (round(x0 * self.downsample), round(y0 * self.downsample))
        try:
            with self.guard.reading() as handle:
                region = handle.read_region(location, self.level, (x1 - x0, y1 - y0))
        except openslide.OpenSlideError as err:
            raise RegionReadError(one_line(err)) from err
        rgb = _on_white(np.asarray(region))
        rest = key[2] if isinstance(key, tuple) and len(key) > 2 else slice(None)
        return rgb[:, :, rest]


class _AssociatedReader:
    """Array-like over an associated image (label, macro, thumbnail), decoded on first use."""

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, guard: _Guard, *, name: str, width: int, height: int) -> None:
        self.guard, self.name = guard, name
        self.shape = (height, width, 3)

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            with self.guard.reading() as handle:
                image = handle.associated_images[self.name]
        except openslide.OpenSlideError as err:
            raise RegionReadError(one_line(err)) from err
        return _on_white(np.asarray(image))[key]


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """RGB of OpenSlide's (non-premultiplied) RGBA, transparent parts composited on white."""
    rgb, alpha = rgba[..., :3], rgba[..., 3:4]
    if bool((alpha == 255).all()):
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)
    blended = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return blended.astype(np.uint8)


def _window(key: Any, shape: tuple[int, int, int]) -> tuple[slice, slice]:
    parts = key if isinstance(key, tuple) else (key,)
    out = []
    for axis in (0, 1):
        part = parts[axis] if axis < len(parts) else slice(None)
        if not isinstance(part, slice) or part.step not in (None, 1):
            raise IndexError("OpenSlide levels are read by contiguous windows only")
        start, stop, _ = part.indices(shape[axis])
        out.append(slice(start, stop))
    return out[0], out[1]


def _chunks(tile: tuple[int | None, int | None]) -> tuple[int, int, int]:
    sizes = []
    for t in (tile[1], tile[0]):
        t = t if t and t > 0 else 256
        sizes.append(t * max(1, math.ceil(CHUNK_TARGET / t)))
    return sizes[0], sizes[1], 3


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        out = float(value) if value is not None else None
    except ValueError:
        return None
    return out if out is not None and math.isfinite(out) else None
