"""Chunk-level work of the label store: which chunks an object touches on each level, and
painting, un-painting and restoring them, one zarr call per run of neighbouring chunks.

Chunk ``(r, c)`` of a level of shape (H, W) with chunk size C covers rows
``[r C, min((r + 1) C, H))`` and columns ``[c C, min((c + 1) C, W))`` of that level.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import zarr

from .label_journal import UndoBlocks

Run = tuple[int, int, int]
"""(chunk row, first chunk column, last chunk column + 1)."""


@dataclass(frozen=True)
class LevelPlan:
    """Where an object lands on one level.

    x0, y0 : level pixel of `mask`'s corner. mask : (h, w) bool in level pixels.
    chunks : (row, col) of every chunk holding at least one True pixel of `mask`.
    """

    level: int
    x0: int
    y0: int
    mask: np.ndarray
    chunks: tuple[tuple[int, int], ...]


def source_index(a0: int, a1: int, *, d: float, n_level: int,
                 n0: int) -> tuple[int, np.ndarray]:
    """Level pixels (along one axis) whose centre lies on level-0 pixels ``[a0, a1)``.

    Returns (first level pixel, (n,) int64 level-0 pixel under each centre); n may be 0.
    """
    lo = max(0, math.floor(a0 / d - 0.5) - 1)
    hi = min(n_level, math.ceil(a1 / d) + 1)
    src = np.minimum(np.floor((np.arange(lo, hi) + 0.5) * d).astype(np.int64), n0 - 1)
    sel = np.flatnonzero((src >= a0) & (src < a1))
    if sel.size == 0:
        return lo, src[:0]
    return lo + int(sel[0]), src[sel[0]:sel[-1] + 1]


def plan_levels(mask: np.ndarray, window: tuple[int, int, int, int], *,
                shapes: Sequence[tuple[int, int]], downsamples: Sequence[float],
                chunk: int) -> list[LevelPlan]:
    """Nearest-sample a level-0 `mask` at `window` onto every level; list the chunks it hits.

    Levels where the mask covers no pixel centre are left out.
    """
    x0, y0, x1, y1 = window
    h0, w0 = shapes[0]
    plans = []
    for level, ((hk, wk), d) in enumerate(zip(shapes, downsamples, strict=True)):
        if level == 0:
            lx0, ly0, mk = x0, y0, mask
        else:
            lx0, sx = source_index(x0, x1, d=d, n_level=wk, n0=w0)
            ly0, sy = source_index(y0, y1, d=d, n_level=hk, n0=h0)
            if sx.size == 0 or sy.size == 0:
                continue
            mk = mask[np.ix_(sy - y0, sx - x0)]
        h, w = mk.shape
        hit = []
        for r in range(ly0 // chunk, (ly0 + h - 1) // chunk + 1):
            ra, rb = max(r * chunk - ly0, 0), min((r + 1) * chunk - ly0, h)
            for c in range(lx0 // chunk, (lx0 + w - 1) // chunk + 1):
                ca, cb = max(c * chunk - lx0, 0), min((c + 1) * chunk - lx0, w)
                if mk[ra:rb, ca:cb].any():
                    hit.append((r, c))
        if hit:
            plans.append(LevelPlan(level, lx0, ly0, mk, tuple(hit)))
    return plans


def runs(chunks: Iterable[tuple[int, int]]) -> list[Run]:
    """Group (row, col) chunks into runs of neighbouring columns on one chunk row."""
    out: list[list[int]] = []
    for r, c in sorted(chunks):
        if out and out[-1][0] == r and out[-1][2] == c:
            out[-1][2] = c + 1
        else:
            out.append([r, c, c + 1])
    return [(r, c0, c1) for r, c0, c1 in out]


def run_bounds(run: Run, shape: tuple[int, ...], chunk: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) level pixels a run covers."""
    r, c0, c1 = run
    return (r * chunk, min((r + 1) * chunk, shape[0]), c0 * chunk, min(c1 * chunk, shape[1]))


def _split(block: np.ndarray, run: Run, chunk: int) -> list[tuple[int, np.ndarray]]:
    """The run's block cut into (column, chunk block) pieces."""
    return [(c, block[:, (c - run[1]) * chunk:(c - run[1] + 1) * chunk])
            for c in range(run[1], run[2])]


def _join(undo: UndoBlocks, level: int, run: Run, shape: tuple[int, ...], chunk: int,
          dtype: np.dtype) -> np.ndarray:
    """The run's pre-image, joined from its chunks' undo blocks."""
    y0, y1, _, _ = run_bounds(run, shape, chunk)
    parts = []
    for c in range(run[1], run[2]):
        width = min((c + 1) * chunk, shape[1]) - c * chunk
        parts.append(undo.get((level, run[0], c), shape=(y1 - y0, width), dtype=dtype))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def read_preimages(levels: Sequence[zarr.Array], plans: Sequence[LevelPlan], *,
                   chunk: int) -> tuple[UndoBlocks, dict[tuple[int, Run], np.ndarray]]:
    """Current contents of every chunk the plans touch: compressed per chunk (the undo data),
    and as arrays per (level, run) for `paint_level` (so nothing is read or decoded twice)."""
    undo = UndoBlocks()
    blocks = {}
    for plan in plans:
        array = levels[plan.level]
        for run in runs(plan.chunks):
            y0, y1, x0, x1 = run_bounds(run, array.shape, chunk)
            block = np.asarray(array[y0:y1, x0:x1])
            for c, part in _split(block, run, chunk):
                undo.put((plan.level, run[0], c), part)
            blocks[(plan.level, run)] = block
    return undo, blocks


def paint_level(array: zarr.Array, plan: LevelPlan, blocks: dict[tuple[int, Run], np.ndarray],
                object_id: int, *, chunk: int) -> None:
    """Write `object_id` where the plan's mask is True into the level's pre-image `blocks`
    (consumed) and write them back."""
    h, w = plan.mask.shape
    for run in runs(plan.chunks):
        y0, y1, x0, x1 = run_bounds(run, array.shape, chunk)
        block = blocks.pop((plan.level, run))
        iy0, iy1 = max(y0, plan.y0), min(y1, plan.y0 + h)
        ix0, ix1 = max(x0, plan.x0), min(x1, plan.x0 + w)
        sub = plan.mask[iy0 - plan.y0:iy1 - plan.y0, ix0 - plan.x0:ix1 - plan.x0]
        block[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0][sub] = object_id
        array[y0:y1, x0:x1] = block


def _write_changed(array: zarr.Array, run: Run, block: np.ndarray, changed: Sequence[int], *,
                   chunk: int) -> None:
    """Write only the chunk columns `changed` of a run's new `block`."""
    y0, y1, x0, _ = run_bounds(run, array.shape, chunk)
    for sub in runs((run[0], c) for c in changed):
        a, b = (sub[1] - run[1]) * chunk, (sub[2] - run[1]) * chunk
        array[y0:y1, x0 + a:x0 + a + block[:, a:b].shape[1]] = block[:, a:b]


def _rewrite_level(array: zarr.Array, level: int, undo: UndoBlocks, *, chunk: int,
                   update: Callable[[np.ndarray, np.ndarray], np.ndarray | None]) -> None:
    """For every run of the level's undo chunks: new = update(current, pre-image) (None: no
    change); write back the chunks that changed."""
    dtype = np.dtype(array.dtype)
    for run in runs(undo.keys_on(level)):
        y0, y1, x0, x1 = run_bounds(run, array.shape, chunk)
        current = np.asarray(array[y0:y1, x0:x1])
        new = update(current, _join(undo, level, run, array.shape, chunk, dtype))
        if new is None:
            continue
        changed = [c for (c, a), (_, b) in zip(_split(current, run, chunk),
                                               _split(new, run, chunk), strict=True)
                   if not np.array_equal(a, b)]
        _write_changed(array, run, new, changed, chunk=chunk)


def unpaint_level(array: zarr.Array, level: int, undo: UndoBlocks, object_id: int, *,
                  chunk: int) -> None:
    """Pixels still showing `object_id` get their pre-image values back."""

    def update(current: np.ndarray, pre: np.ndarray) -> np.ndarray | None:
        hit = current == object_id
        return np.where(hit, pre, current) if hit.any() else None

    _rewrite_level(array, level, undo, chunk=chunk, update=update)


def restore_preimages(levels: Sequence[zarr.Array], undo: UndoBlocks, *, chunk: int) -> None:
    """Write every pre-image back whole (crash rollback of an unfinished add)."""
    for level, array in enumerate(levels):
        _rewrite_level(array, level, undo, chunk=chunk, update=lambda _cur, pre: pre)


def patch_undo(later: UndoBlocks, removed: UndoBlocks, object_id: int, *,
               levels: Sequence[zarr.Array], chunk: int) -> bool:
    """In a later object's pre-images, replace `object_id` (being removed) by what was under
    it, so no undo data ever names a removed object. True when `later` changed."""
    changed = False
    for key in [k for k in later if k in removed]:
        level, r, c = key
        shape = levels[level].shape
        bshape = (min((r + 1) * chunk, shape[0]) - r * chunk,
                  min((c + 1) * chunk, shape[1]) - c * chunk)
        dtype = np.dtype(levels[level].dtype)
        block = later.get(key, shape=bshape, dtype=dtype)
        hit = block == object_id
        if hit.any():
            block[hit] = removed.get(key, shape=bshape, dtype=dtype)[hit]
            later.put(key, block)
            changed = True
    return changed
