"""Convert a label store of release 0.1 (a zarr label pyramid + ``objects.json``) once.

Release 0.1 kept one object per pixel: a later object erased what it covered, and only its
undo file (``undo/<id>.npz``, the chunks as they were before it was painted) remembers what was
under it. Every object is rebuilt whole: the pixels still showing its id at level 0, plus its
pixels in the pre-image of every later object. Its record (class, colour, model, score, prompt,
time) comes from the table; its id is kept. The legacy files are only read; after a successful
conversion they move into ``backup-0.1/`` beside the new ``objects.sqlite`` (nothing is deleted).
A conversion cut short leaves only ``objects.sqlite.migrating``, which the next open redoes.
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc

from ..errors import LabelStoreError
from ..polygons import mask_to_geometry
from ..windows import Window
from .colors import as_hex
from .object_store import NewObject, ObjectStore
from .schema import DB_NAME

logger = logging.getLogger(__name__)

LEGACY_TABLE = "objects.json"
LEGACY_LEVELS = "levels.zarr"
LEGACY_UNDO = "undo"
LEGACY_PENDING = "pending.json"
BACKUP_DIR = "backup-0.1"
_CODEC = Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)


def has_legacy_store(folder: Path) -> bool:
    return (folder / LEGACY_TABLE).is_file() and (folder / LEGACY_LEVELS).is_dir()


@dataclass(frozen=True)
class LegacyObject:
    id: int
    record: dict[str, Any]
    mask: np.ndarray
    window: Window


def read_legacy_objects(folder: Path) -> list[LegacyObject]:
    """Every object of a 0.1 store, each with its whole mask (level-0 px)."""
    try:
        table = json.loads((folder / LEGACY_TABLE).read_text(encoding="utf-8"))
        records = {int(r["id"]): r for r in table["objects"]}
        level0 = zarr.open_array(folder / LEGACY_LEVELS / "0", mode="r")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise LabelStoreError(f"{folder} holds a label store of release 0.1 that cannot be read "
                              f"({error}); it was left untouched") from error
    chunk = int(level0.chunks[0])
    shape = tuple(int(s) for s in level0.shape)
    dtype = np.dtype(level0.dtype)
    masks: dict[int, np.ndarray] = {}
    for object_id, record in records.items():
        x0, y0, x1, y1 = (int(v) for v in record["window"])
        masks[object_id] = np.asarray(level0[y0:y1, x0:x1]) == object_id
    for later in sorted(records):
        for (level, row, col), block in _undo_blocks(folder, later, chunk, shape, dtype):
            if level != 0:
                continue
            for object_id, record in records.items():
                if object_id >= later:
                    continue
                _add_pixels(masks[object_id], record["window"], block, row * chunk,
                            col * chunk, object_id)
    out = []
    for i in sorted(records):
        x0, y0, x1, y1 = (int(v) for v in records[i]["window"])
        out.append(LegacyObject(i, records[i], masks[i], (x0, y0, x1, y1)))
    return out


def _undo_blocks(folder: Path, object_id: int, chunk: int, shape: tuple[int, ...],
                 dtype: np.dtype):
    path = folder / LEGACY_UNDO / f"{object_id}.npz"
    if not path.is_file():
        return
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                level, row, col = (int(v) for v in name.split("_"))
                if level != 0:
                    continue
                h = min((row + 1) * chunk, shape[0]) - row * chunk
                w = min((col + 1) * chunk, shape[1]) - col * chunk
                out = np.empty((h, w), dtype)
                _CODEC.decode(zf.read(name), out=out)
                yield (level, row, col), out
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise LabelStoreError(f"{path}: undo data of release 0.1 is unreadable ({error}); "
                              "the store was left untouched") from error


def _add_pixels(mask: np.ndarray, window: Any, block: np.ndarray, by: int, bx: int,
                object_id: int) -> None:
    """Set the pixels of `mask` (at `window`) where the block (at bx, by) shows the id."""
    x0, y0, x1, y1 = (int(v) for v in window)
    ix0, iy0 = max(x0, bx), max(y0, by)
    ix1, iy1 = min(x1, bx + block.shape[1]), min(y1, by + block.shape[0])
    if ix1 <= ix0 or iy1 <= iy0:
        return
    mask[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] |= (
        block[iy0 - by:iy1 - by, ix0 - bx:ix1 - bx] == object_id)


def migrate(legacy: Path, target: Path, *, meta: dict[str, Any]) -> ObjectStore:
    """Convert the 0.1 store in folder `legacy` into a new object store at `target` (a
    ``objects.sqlite`` path), then move the legacy files into ``backup-0.1/``."""
    objects = read_legacy_objects(legacy)
    tmp = target.with_name(target.name + ".migrating")
    tmp.unlink(missing_ok=True)
    store = ObjectStore.create(tmp, meta=meta)
    try:
        colors: dict[str, str] = {}
        items = []
        for obj in objects:
            record = obj.record
            if not obj.mask.any():
                logger.warning("object %d of %s had no pixels left; kept as its box", obj.id,
                               legacy)
                obj.mask[...] = True
            geometry = mask_to_geometry(obj.mask, obj.window)
            score = record.get("score")
            items.append(NewObject(
                geometry=geometry, class_name=record["class_name"], model=record.get("model", ""),
                score=score, score_kind=record.get("score_kind", "predicted_iou")
                if score is not None else None, prompt=record.get("prompt"), id=obj.id,
                created=_time(record.get("created"))))
            colors.setdefault(record["class_name"], as_hex(record.get("color")))
        store.add_many(items, op="migrate")
        for name, color in colors.items():
            store.set_class(name, color)
    except BaseException:
        store.close()
        tmp.unlink(missing_ok=True)
        raise
    store.close()
    tmp.replace(target)
    _move_aside(legacy)
    logger.warning("converted the label store in %s (release 0.1, %d objects) into %s; the old "
                   "files are in %s", legacy, len(objects), target, legacy / BACKUP_DIR)
    return ObjectStore.open(target)


def _move_aside(legacy: Path) -> None:
    """Move the legacy files into a fresh ``backup-0.1[-N]/`` (left in place, with a note,
    when their folder cannot be written)."""
    backup, n = legacy / BACKUP_DIR, 1
    while backup.exists():
        n += 1
        backup = legacy / f"{BACKUP_DIR}-{n}"
    try:
        backup.mkdir()
        for name in (LEGACY_TABLE, LEGACY_LEVELS, LEGACY_UNDO, LEGACY_PENDING):
            if (legacy / name).exists():
                shutil.move(str(legacy / name), str(backup / name))
    except OSError as error:
        logger.warning("the release-0.1 files in %s stay where they are (%s)", legacy, error)


def _time(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except (TypeError, ValueError):
        return None


__all__ = ["DB_NAME", "has_legacy_store", "migrate", "read_legacy_objects"]
