"""`LabelStore`: a slide-sized label pyramid on disk (zarr v3), written one object at a time.

Coordinates: level-0 slide pixels, x then y; pixel ``i`` covers ``[i, i + 1)``; windows are
``(x0, y0, x1, y1)`` with x1/y1 exclusive. Level ``k`` (downsample ``d``) has shape
``(ceil(h / d), ceil(w / d))`` and its pixel ``(i, j)`` takes the level-0 pixel under its centre,
``(min(floor((j + 0.5) d), w - 1), min(floor((i + 0.5) d), h - 1))`` (nearest sampling), so every
level is exactly level 0 resampled, whatever was added or undone.

Each add writes only the chunks its mask touches, on every level, and keeps their previous
contents in ``undo/<id>.npz`` (for undo and for crash recovery, see `label_journal`). The layout
on disk and the guarantees are in docs/labels.md.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from ..errors import LabelStoreError
from ..windows import Window
from .label_journal import UndoBlocks, read_json, write_json
from .label_ops import (
    LevelPlan,
    Run,
    paint_level,
    patch_undo,
    plan_levels,
    read_preimages,
    restore_preimages,
    unpaint_level,
)

if TYPE_CHECKING:
    from ..slide.reader import Slide

logger = logging.getLogger(__name__)

FORMAT = "napari-wsi-sam-labels"
VERSION = 1
LEVELS_DIR = "levels.zarr"
TABLE = "objects.json"
PENDING = "pending.json"
UNDO_DIR = "undo"
SUFFIX = ".wsi-sam"
DTYPES = ("uint8", "uint16", "uint32", "uint64")




@dataclass(frozen=True)
class LabelObject:
    """One object's record in the table.

    window : (x0, y0, x1, y1) level-0 box around the mask as written (x1/y1 exclusive).
    area : mask pixels at level 0 when written (later objects may cover part of it).
    created : ISO 8601 UTC time of the add.
    """

    id: int
    class_name: str
    color: str | tuple[float, ...]
    model: str
    score: float | None
    prompt: dict[str, Any] | None
    window: Window
    area: int
    created: str
    score_kind: str = "predicted_iou"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabelObject:
        color = d["color"] if isinstance(d["color"], str) else tuple(d["color"])
        return cls(**{**d, "color": color, "window": tuple(int(v) for v in d["window"])})


class LabelStore:
    """Label pyramid in `folder`; make one with `create`, `open` or `for_slide`.

    levels : zarr arrays, (H_k, W_k) `dtype`, finest first; 0 is background, object ids >= 1.
    """

    def __init__(self, folder: Path, *, group: zarr.Group, durable: bool = True) -> None:
        self.folder = Path(folder)
        self.durable = durable
        meta = group.attrs.get(FORMAT)
        if not isinstance(meta, dict) or meta.get("version") != VERSION:
            raise LabelStoreError(f"{folder} is not a napari-wsi-sam label store "
                                  f"(no {FORMAT} v{VERSION} attributes)")
        self.shape: tuple[int, int] = (int(meta["shape"][0]), int(meta["shape"][1]))
        self.downsamples: list[float] = [float(d) for d in meta["downsamples"]]
        self.chunk = int(meta["chunk"])
        self.slide_path: str | None = meta.get("slide_path")
        self.mpp: tuple[float, float] | None = (tuple(meta["mpp"]) if meta.get("mpp")
                                                 else None)  # type: ignore[assignment]
        self.levels: list[zarr.Array] = []
        for k in range(len(self.downsamples)):
            array = group.get(str(k))
            if not isinstance(array, zarr.Array):
                raise LabelStoreError(f"{folder}: level {k} is missing from {LEVELS_DIR}")
            self.levels.append(array)
        self.dtype = np.dtype(self.levels[0].dtype)
        self._objects: dict[int, LabelObject] = {}
        self._next_id = 1
        self._load_table()
        self._recover()

    # -- making and opening ----------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | Path, *, shape: tuple[int, int], downsamples: list[float],
               chunk: int = 1024, dtype: str = "uint32", slide_path: str | Path | None = None,
               mpp: tuple[float, float] | None = None, durable: bool = True) -> LabelStore:
        """A new, empty store; `shape` is (height, width) of level 0, `downsamples` level-0
        pixels per level pixel (``downsamples[0] == 1``). Writes only metadata: no chunks."""
        folder = Path(folder)
        h, w = (int(v) for v in shape)
        if h < 1 or w < 1:
            raise LabelStoreError(f"label store shape must be positive (height, width), "
                                  f"got {shape}")
        if not downsamples or abs(downsamples[0] - 1.0) > 1e-9 or min(downsamples) < 1.0:
            raise LabelStoreError(f"downsamples must start at 1 and be >= 1, got {downsamples}")
        if dtype not in DTYPES:
            raise LabelStoreError(f"label dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if chunk < 16:
            raise LabelStoreError(f"chunk must be at least 16 pixels, got {chunk}")
        if (folder / LEVELS_DIR).exists():
            raise LabelStoreError(f"{folder} already holds a label store; open it instead")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / UNDO_DIR).mkdir(exist_ok=True)
        meta: dict[str, Any] = {
            "version": VERSION, "shape": [h, w], "downsamples": [float(d) for d in downsamples],
            "chunk": int(chunk), "slide_path": None if slide_path is None else str(slide_path),
            "mpp": None if mpp is None else [float(mpp[0]), float(mpp[1])]}
        attributes: dict[str, Any] = {FORMAT: meta}
        group = zarr.open_group(folder / LEVELS_DIR, mode="w", zarr_format=3,
                                attributes=attributes)
        for k, d in enumerate(downsamples):
            lshape = (math.ceil(h / d), math.ceil(w / d))
            group.create_array(str(k), shape=lshape, dtype=dtype, fill_value=0,
                               chunks=(min(chunk, lshape[0]), min(chunk, lshape[1])),
                               dimension_names=("y", "x"), config={"write_empty_chunks": False})
        write_json(folder / TABLE, {"next_id": 1, "objects": []}, durable=durable)
        logger.info("created label store %s: %dx%d, %d levels", folder, w, h, len(downsamples))
        return cls(folder, group=group, durable=durable)

    @classmethod
    def open(cls, folder: str | Path, *, durable: bool = True) -> LabelStore:
        """Open an existing store, rolling back an add (or finishing a removal) that a crash
        interrupted."""
        folder = Path(folder)
        if not (folder / LEVELS_DIR / "zarr.json").is_file() or not (folder / TABLE).is_file():
            raise LabelStoreError(f"{folder} is not a napari-wsi-sam label store "
                                  f"(no {LEVELS_DIR}/ or {TABLE})")
        try:
            group = zarr.open_group(folder / LEVELS_DIR, mode="r+")
        except (OSError, ValueError, KeyError) as err:
            raise LabelStoreError(f"{folder}: label levels are unreadable ({err})") from err
        return cls(folder, group=group, durable=durable)

    @classmethod
    def for_slide(cls, slide: Slide, *, folder: str | Path | None = None) -> LabelStore:
        """The store of `slide`: `folder`, else ``<slide stem>.wsi-sam/`` beside the slide, else
        (slide folder not writable) one in the user cache. Opens it if it exists."""
        target = Path(folder) if folder is not None else default_folder(slide.path)
        w, h = slide.dimensions
        if (target / LEVELS_DIR).exists():
            store = cls.open(target)
            if store.shape != (h, w):
                raise LabelStoreError(f"{target} holds labels of {store.shape[1]}x{store.shape[0]} "
                                      f"px but {slide.path.name} is {w}x{h}; move that folder")
            return store
        return cls.create(target, shape=(h, w), downsamples=list(slide.downsamples),
                          slide_path=slide.path.resolve(), mpp=slide.mpp)

    # -- reading ---------------------------------------------------------------------------
    @property
    def objects(self) -> dict[int, LabelObject]:
        """id -> record of every object, in the order they were added."""
        return dict(self._objects)

    @property
    def next_id(self) -> int:
        """The id the next object will get; ids are never reused, even after undo."""
        return self._next_id

    @property
    def level_shapes(self) -> list[tuple[int, int]]:
        """(height, width) of every level."""
        return [(int(a.shape[0]), int(a.shape[1])) for a in self.levels]

    def read_window(self, level: int, window: Window) -> np.ndarray:
        """Labels ``[y0:y1, x0:x1]`` of `level`, window in *that level's* pixels, (h, w) dtype."""
        if not 0 <= level < len(self.levels):
            raise LabelStoreError(f"level {level} does not exist (0..{len(self.levels) - 1})")
        x0, y0, x1, y1 = (int(v) for v in window)
        hk, wk = self.level_shapes[level]
        if not (0 <= x0 < x1 <= wk and 0 <= y0 < y1 <= hk):
            raise LabelStoreError(f"window {window} is not inside level {level} ({wk}x{hk} px)")
        return np.asarray(self.levels[level][y0:y1, x0:x1])

    def object_mask(self, object_id: int) -> tuple[np.ndarray, Window]:
        """(mask (h, w) bool, window) of the object's pixels still visible at level 0."""
        record = self._record(object_id)
        return self.read_window(0, record.window) == object_id, record.window

    def object_masks(self, ids: Iterable[int] | None = None
                     ) -> list[tuple[int, np.ndarray, Window]]:
        """(id, mask, window) of many objects (default all), in table order, like
        `object_mask` but reading each level-0 region once: objects are grouped by the chunk
        that holds their window's top-left corner, and each group's bounding window is read
        in one go (an export of 10,000 nuclei would otherwise decode each chunk hundreds of
        times)."""
        records = ([self._record(i) for i in ids] if ids is not None
                   else list(self.objects.values()))
        groups: dict[tuple[int, int], list[LabelObject]] = {}
        for record in records:
            x0, y0 = record.window[:2]
            groups.setdefault((y0 // self.chunk, x0 // self.chunk), []).append(record)
        masks: dict[int, np.ndarray] = {}
        for group in groups.values():
            gx0 = min(r.window[0] for r in group)
            gy0 = min(r.window[1] for r in group)
            block = self.read_window(0, (gx0, gy0, max(r.window[2] for r in group),
                                         max(r.window[3] for r in group)))
            for r in group:
                x0, y0, x1, y1 = r.window
                masks[r.id] = block[y0 - gy0:y1 - gy0, x0 - gx0:x1 - gx0] == r.id
        return [(r.id, masks[r.id], r.window) for r in records]

    # -- writing ---------------------------------------------------------------------------
    def add_object(self, mask: np.ndarray, window: Window, *, class_name: str = "object",
                   color: str | tuple[float, ...] = "#ffff00", model: str = "",
                   score: float | None = None, prompt: dict[str, Any] | None = None,
                   score_kind: str = "predicted_iou") -> int:
        """Paint `mask` (h, w) bool at level-0 `window` (x0, y0, x1, y1) on every level and
        record it; returns the new id. Pixels where the mask is False keep their labels."""
        mask, window = self._check_mask(mask, window)
        object_id = self._next_id
        if object_id > np.iinfo(self.dtype).max:
            raise LabelStoreError(f"object id {object_id} does not fit {self.dtype}; "
                                  "create the store with a wider dtype")
        record = LabelObject(id=object_id, class_name=str(class_name),
                             color=color if isinstance(color, str) else tuple(color),
                             model=str(model), score=None if score is None else float(score),
                             prompt=prompt, window=window, area=int(mask.sum()),
                             created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             score_kind=str(score_kind))
        try:
            json.dumps(asdict(record))
        except (TypeError, ValueError) as err:
            raise LabelStoreError(f"object metadata is not JSON-serialisable ({err})") from err
        plans = plan_levels(mask, window, shapes=self.level_shapes,
                                      downsamples=self.downsamples, chunk=self.chunk)
        undo, blocks = read_preimages(self.levels, plans, chunk=self.chunk)
        undo.save(self._undo_path(object_id), durable=self.durable)
        self._set_pending({"op": "add", "id": object_id})
        try:
            for plan in plans:
                self._write_level(plan, blocks, object_id)
            self._objects[object_id] = record
            self._next_id = object_id + 1
            self._save_table()
        except BaseException:
            self._objects.pop(object_id, None)
            self._recover()
            raise
        self._clear_pending()
        logger.debug("added object %d (%d px) at %s", object_id, record.area, window)
        return object_id

    def undo(self) -> int | None:
        """Remove the last object from every level (older labels come back); its id, or None."""
        if not self._objects:
            return None
        last = max(self._objects)
        self.remove_object(last)
        return last

    def remove_object(self, object_id: int) -> None:
        """Remove any object: its visible pixels get back what was under them when it was
        drawn (or what was under *that*, if that object is gone too)."""
        self._record(object_id)
        self._set_pending({"op": "remove", "id": object_id})
        self._finish_remove(object_id)
        self._clear_pending()

    # -- internals -------------------------------------------------------------------------
    def _write_level(self, plan: LevelPlan, blocks: dict[tuple[int, Run], np.ndarray],
                     object_id: int) -> None:
        paint_level(self.levels[plan.level], plan, blocks, object_id, chunk=self.chunk)

    def _finish_remove(self, object_id: int) -> None:
        """Idempotent: restore pixels, patch later objects' undo data, drop record and file."""
        path = self._undo_path(object_id)
        if object_id in self._objects:
            undo = UndoBlocks.load(path)
            for level, array in enumerate(self.levels):
                unpaint_level(array, level, undo, object_id, chunk=self.chunk)
            for later in [i for i in self._objects if i > object_id]:
                later_path = self._undo_path(later)
                later_undo = UndoBlocks.load(later_path)
                if patch_undo(later_undo, undo, object_id, levels=self.levels,
                                        chunk=self.chunk):
                    later_undo.save(later_path, durable=self.durable)
            del self._objects[object_id]
            self._save_table()
        path.unlink(missing_ok=True)

    def _recover(self) -> None:
        """Finish or roll back what `pending.json` says was under way; drop stray files."""
        pending_path = self.folder / PENDING
        if pending_path.exists():
            pending = read_json(pending_path)
            op, object_id = pending.get("op"), int(pending.get("id", 0))
            if op == "add" and object_id not in self._objects:
                logger.warning("%s: rolling back object %d, interrupted while being written",
                               self.folder, object_id)
                undo_path = self._undo_path(object_id)
                if undo_path.exists():
                    restore_preimages(self.levels, UndoBlocks.load(undo_path),
                                                chunk=self.chunk)
                    undo_path.unlink()
                self._next_id = max(self._next_id, object_id + 1)
                self._save_table()
            elif op == "remove":
                logger.warning("%s: finishing the removal of object %d", self.folder, object_id)
                self._finish_remove(object_id)
            self._clear_pending()
        undo_dir = self.folder / UNDO_DIR
        undo_dir.mkdir(exist_ok=True)
        for path in undo_dir.iterdir():
            stem = path.name.split(".")[0]
            if path.suffix == ".tmp" or not stem.isdigit() or int(stem) not in self._objects:
                path.unlink()

    def _check_mask(self, mask: np.ndarray, window: Window) -> tuple[np.ndarray, Window]:
        """Validate; return the mask cropped to its True pixels and that tighter window."""
        mask = np.asarray(mask)
        if len(window) != 4:
            raise LabelStoreError(f"window must be (x0, y0, x1, y1), got {window!r}")
        x0, y0, x1, y1 = (int(v) for v in window)
        if mask.ndim != 2 or mask.shape != (y1 - y0, x1 - x0):
            raise LabelStoreError(f"mask shape {mask.shape} does not match window {window} "
                                  f"(expects (y1 - y0, x1 - x0) = ({y1 - y0}, {x1 - x0}))")
        h, w = self.shape
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise LabelStoreError(f"window {window} lies off the slide ({w}x{h} px); clip it "
                                  "to [0, width) x [0, height) first")
        mask = mask.astype(bool, copy=False)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            raise LabelStoreError(f"mask at {window} is empty; nothing to add")
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        return mask[r0:r1, c0:c1], (x0 + c0, y0 + r0, x0 + c1, y0 + r1)

    def _record(self, object_id: int) -> LabelObject:
        if object_id not in self._objects:
            raise LabelStoreError(f"no object {object_id} in {self.folder} "
                                  f"({len(self._objects)} objects)")
        return self._objects[object_id]

    def _undo_path(self, object_id: int) -> Path:
        return self.folder / UNDO_DIR / f"{object_id}.npz"

    def _set_pending(self, payload: dict[str, Any]) -> None:
        write_json(self.folder / PENDING, payload, durable=self.durable)

    def _clear_pending(self) -> None:
        (self.folder / PENDING).unlink(missing_ok=True)

    def _load_table(self) -> None:
        table = read_json(self.folder / TABLE)
        try:
            self._objects = {int(d["id"]): LabelObject.from_json(d) for d in table["objects"]}
            self._next_id = int(table["next_id"])
        except (KeyError, TypeError, ValueError) as err:
            raise LabelStoreError(f"{self.folder / TABLE} is damaged ({err})") from err

    def _save_table(self) -> None:
        write_json(self.folder / TABLE, {"next_id": self._next_id,
                                         "objects": [asdict(r) for r in self._objects.values()]},
                   durable=self.durable)

    def __repr__(self) -> str:
        h, w = self.shape
        return (f"LabelStore({str(self.folder)!r}, {w}x{h}, {len(self.levels)} levels, "
                f"{len(self._objects)} objects)")


def default_folder(slide_path: Path) -> Path:
    """``<stem>.wsi-sam`` beside the slide, or in the user cache when that folder is not
    writable (logged)."""
    from ..paths import cache_home

    slide_path = Path(slide_path)
    beside = slide_path.parent / f"{slide_path.stem}{SUFFIX}"
    try:
        beside.mkdir(exist_ok=True)
        probe = beside / ".write-test"
        probe.touch()
        probe.unlink()
        return beside
    except OSError as err:
        import hashlib

        digest = hashlib.sha1(str(slide_path.resolve()).encode()).hexdigest()[:10]
        fallback = cache_home() / "labels" / f"{slide_path.stem}-{digest}{SUFFIX}"
        logger.info("cannot write labels beside %s (%s); using %s", slide_path, err, fallback)
        return fallback
