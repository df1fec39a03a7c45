"""Lazy pyramid levels: any image array becomes (Y, X, 3) uint8, and missing levels are made.

Everything here builds dask graphs; nothing is decoded until a caller slices and computes.

- `to_rgb8` turns a level of any layout tifffile reports (``YXS``, ``SYX``, ``CYX``, ``ZYXS``,
  ``YX``, ...) into RGB uint8: extra planes keep their first index, grayscale is repeated into
  three channels, alpha is dropped, and other dtypes are scaled by one factor for all levels.
- `add_virtual_levels` halves the coarsest level (2x2 area average, exact rounding) until its
  smaller side is below `VIRTUAL_MIN_SIDE`. A virtual level's pixel ``i`` covers exactly the
  parent pixels ``2i`` and ``2i + 1``: its scale to level 0 is exact, an odd last row or column
  of the parent is dropped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import dask.array as da
import numpy as np

from ..errors import SlideError

logger = logging.getLogger(__name__)

VIRTUAL_MIN_SIDE = 1024
"""Virtual levels are added until the smaller side of the coarsest level is below this."""

_MIN_CHUNK = 128
_TARGET_CHUNK = 256


def to_rgb8(level: da.Array, axes: str, *, scale: float | None, name: str,
            log: bool = True) -> da.Array:
    """A level with tifffile `axes` as (Y, X, 3) uint8; `scale` maps values to 0-255.

    `scale` is ignored for uint8 data; for other dtypes it is ``255 / peak`` (see `value_scale`).
    Notes about what was changed are logged with `name` (the file) when `log` is true.
    """
    note = logger.info if log else _quiet
    arr = _select_yx_channels(level, axes, name=name, note=note)
    channels = arr.shape[-1]
    if channels in (1, 2):
        if channels == 2:
            note("%s: grey + alpha; alpha dropped", name)
        note("%s: grayscale image, shown as RGB", name)
        arr = da.concatenate([arr[..., :1]] * 3, axis=-1)
    elif channels == 4:
        note("%s: RGBA image; alpha channel dropped", name)
        arr = arr[..., :3]
    elif channels > 4:
        (logger.warning if log else _quiet)(
            "%s: %d channels; only the first three are shown as RGB", name, channels)
        arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * np.uint8(255)
    factor = 1.0 if scale is None else scale
    note("%s: %s data scaled to uint8 (x %.4g)", name, arr.dtype, factor)
    return da.map_blocks(_scale_block, arr, factor=factor, dtype=np.uint8)


def value_scale(dtype: np.dtype, sample: np.ndarray | None) -> float:
    """Factor taking `dtype` values to 0-255: from the sample's peak when there is one."""
    if sample is not None and sample.size:
        peak = float(np.nanmax(sample))
        if math.isfinite(peak) and peak > 0:
            return 255.0 / peak
    if np.issubdtype(dtype, np.integer):
        return 255.0 / float(np.iinfo(dtype).max)
    return 255.0


def add_virtual_levels(levels: list[da.Array], scales: list[tuple[float, float]], *,
                       min_side: int = VIRTUAL_MIN_SIDE) -> int:
    """Append halved levels (and their scales) in place; returns how many were added."""
    added = 0
    while min(levels[-1].shape[:2]) >= min_side:
        levels.append(halve(levels[-1]))
        sx, sy = scales[-1]
        scales.append((sx * 2.0, sy * 2.0))
        added += 1
    return added


def halve(level: da.Array) -> da.Array:
    """(H, W, C) uint8 -> (H // 2, W // 2, C), each pixel the rounded mean of a 2x2 block."""
    h, w = level.shape[:2]
    arr = level[: h - h % 2, : w - w % 2]
    chunks = []
    for axis in (0, 1):
        sizes = arr.chunks[axis]
        if all(c % 2 == 0 for c in sizes) and sizes[0] >= _MIN_CHUNK:
            chunks.append(sizes)
            continue
        first = max(sizes[0], 2)
        step = first * math.ceil(_TARGET_CHUNK / first) if first < _MIN_CHUNK else first
        chunks.append(step + step % 2)
    if any(not isinstance(c, tuple) for c in chunks):
        arr = arr.rechunk((chunks[0], chunks[1], arr.shape[2]))
    out_chunks = (tuple(c // 2 for c in arr.chunks[0]), tuple(c // 2 for c in arr.chunks[1]),
                  arr.chunks[2])
    return arr.map_blocks(_halve_block, chunks=out_chunks, dtype=np.uint8)


def _halve_block(block: np.ndarray) -> np.ndarray:
    b = block.astype(np.uint16)
    total = b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2]
    return ((total + 2) // 4).astype(np.uint8)


def _scale_block(block: np.ndarray, *, factor: float) -> np.ndarray:
    out = np.nan_to_num(block.astype(np.float32) * np.float32(factor), nan=0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _quiet(*_args: object) -> None:
    """Stands in for a logger call on levels after the first (one note per file is enough)."""


def _select_yx_channels(arr: da.Array, axes: str, *, name: str,
                        note: Callable[..., None]) -> da.Array:
    """Keep Y, X and one channel axis (S preferred, else C), channel last; (Y, X, C)."""
    axes = axes.upper()
    if len(axes) != arr.ndim or "Y" not in axes or "X" not in axes:
        raise SlideError(f"{name}: cannot read image axes {axes!r} of shape {arr.shape}")
    channel = "S" if "S" in axes else ("C" if "C" in axes else None)
    index: list[slice | int] = []
    kept = ""
    for ax, size in zip(axes, arr.shape, strict=True):
        if ax in ("Y", "X") or ax == channel:
            index.append(slice(None))
            kept += ax
        else:
            if size > 1:
                note("%s: %d planes along axis %s; using the first", name, size, ax)
            index.append(0)
    arr = arr[tuple(index)]
    if channel is None:
        arr = arr[..., None]
        kept += "S"
        channel = "S"
    order = [kept.index("Y"), kept.index("X"), kept.index(channel)]
    return arr.transpose(order)
