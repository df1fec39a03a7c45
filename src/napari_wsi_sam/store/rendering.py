"""Label pyramids drawn from the object store: a view of the objects, never their truth.

One pyramid per layer (by default one per class, so overlapping objects of different classes
all show), with the slide's levels, in ``<store folder>/render/layers.zarr``. Pixel values are
object ids; inside one layer the object changed last is drawn on top, but every object stays
in the store and in every export. Level ``k`` (downsample ``d``) samples level 0 at the pixel
under each of its centres, ``min(floor((j + 0.5) d), w - 1)``, so every level is level 0
resampled.

`ObjectRasters.sync` reads the store's change log since the last sync and redraws only the
windows the changed versions cover, chunk by chunk, from the store; the same path serves the
viewer's own edits and edits made by other processes. A sync is crash-safe: the windows about
to be drawn are recorded first and redrawn at the next open. The folder can be deleted at any
time and is rebuilt from the store.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import zarr

from ..errors import StoreError
from ..polygons import rasterize
from ..windows import Window
from .object_store import ObjectStore

logger = logging.getLogger(__name__)

FORMAT = "napari-wsi-sam-render"
VERSION = 1
RENDER_DIR = "render"
SMALL = 256
"""Objects meeting at most this many samples of a tile are tested point by point, together."""

Progress = Callable[[int, int], None]


class ObjectRasters:
    """The label pyramids of one store. `layers` maps layer name (a class) -> zarr levels."""

    def __init__(self, store: ObjectStore, *, shape: tuple[int, int],
                 downsamples: Sequence[float], chunk: int = 1024, folder: Path | None = None,
                 dtype: str = "uint32") -> None:
        if store.read_only:
            folder = folder or _read_only_folder(store)
        self.store = store
        self.folder = Path(folder) if folder is not None else store.folder / RENDER_DIR
        self.shape = (int(shape[0]), int(shape[1]))
        self.downsamples = [float(d) for d in downsamples]
        self.chunk = int(chunk)
        self.dtype = dtype
        self.group = self._open_group()

    # ----------------------------------------------------------------- state
    @property
    def _state(self) -> dict[str, Any]:
        return dict(self.group.attrs[FORMAT])  # type: ignore[arg-type]

    def _save_state(self, **changes: Any) -> None:
        state = {**self._state, **changes}
        self.group.attrs[FORMAT] = state

    @property
    def synced_seq(self) -> int:
        return int(self._state["synced_seq"])

    def layer_names(self) -> list[str]:
        """Every class of the store that has a pyramid (created on first use)."""
        return list(self._state["layers"])

    def levels(self, name: str) -> list[zarr.Array]:
        """The zarr levels of layer `name`, finest first (drawn now if it is new, or if its
        arrays went missing)."""
        key = self._state["layers"].get(name)
        if key is None or f"{key}/0" not in self.group:
            key = self._new_layer(name)
        return [self.group[f"{key}/{k}"]  # type: ignore[misc]
                for k in range(len(self.downsamples))]

    # ----------------------------------------------------------------- drawing
    def sync(self) -> dict[str, list[Window]]:
        """Redraw what the store's changes since the last sync touched; returns, per layer,
        the level-0 windows redrawn (empty when nothing changed)."""
        pending = {name: [tuple(w) for w in windows]
                   for name, windows in self._state.get("pending", {}).items()}
        changes = self.store.changes_since(self.synced_seq)
        if not changes and not pending:
            return {}
        vids = {v for c in changes for v in (c.before_vid, c.after_vid) if v is not None}
        info = self.store.version_info(vids)
        touched: dict[str, list[Window]] = {k: list(v) for k, v in pending.items()}
        for change in changes:
            for vid in {change.before_vid, change.after_vid}:  # a delete: one version
                if vid is not None and vid in info:
                    name, window = info[vid]
                    if window not in touched.setdefault(name, []):
                        touched[name].append(window)
        last = changes[-1].seq if changes else self.synced_seq
        known = self._state["layers"]
        self._draw_recorded({k: v for k, v in touched.items() if k in known}, synced_seq=last)
        return touched

    def _draw_recorded(self, todo: dict[str, list[Window]], **state: Any) -> None:
        """Draw, having first recorded what is about to be drawn (redrawn after a crash)."""
        pending = {k: [list(w) for w in v] for k, v in self._state.get("pending", {}).items()}
        for name, windows in todo.items():
            pending.setdefault(name, []).extend(list(w) for w in windows)
        self._save_state(pending=pending)
        for name, windows in todo.items():
            self.draw(name, windows)
        left = {k: v for k, v in pending.items() if k not in todo}
        self._save_state(pending=left, **state)

    def draw(self, name: str, windows: Iterable[Window]) -> None:
        """Redraw layer `name` from the store wherever `windows` (level-0 px) reach."""
        arrays = self.levels(name)
        for level, (array, d) in enumerate(zip(arrays, self.downsamples, strict=True)):
            for tile in self._tiles(level, windows):
                self._draw_tile(name, array, d, tile)

    def rebuild(self, names: Iterable[str] | None = None, *,
                progress: Progress | None = None) -> None:
        """Draw layers afresh from the store (all of them by default)."""
        todo = list(names) if names is not None else self.layer_names()
        for index, name in enumerate(todo):
            old = self._state["layers"].get(name)
            self._new_layer(name)  # new arrays; the state points at them in one write
            if old is not None and old in self.group:
                del self.group[old]  # an orphan if this is cut short: swept at the next open
            if progress is not None:
                progress(index + 1, len(todo))

    # ----------------------------------------------------------------- internals
    def _open_group(self) -> zarr.Group:
        state: dict[str, Any] = {
            "version": VERSION, "shape": list(self.shape), "downsamples": self.downsamples,
            "chunk": self.chunk, "store": self.store.meta.get("store_id"),
            "synced_seq": self.store.last_seq(), "layers": {}, "pending": {}}
        path = self.folder / "layers.zarr"
        group = None
        if (path / "zarr.json").is_file():
            try:
                group = zarr.open_group(path, mode="r+")
                saved = dict(group.attrs.get(FORMAT) or {})  # type: ignore[arg-type]
                same = all(saved.get(k) == state[k] for k in
                           ("version", "shape", "downsamples", "chunk", "store"))
                if not same:
                    logger.info("%s belongs to another store or layout; drawing it again", path)
                    group = None
            except (OSError, ValueError, KeyError) as error:
                logger.warning("%s is unreadable (%s); drawing it again from the store",
                               path, error)
                group = None
        if group is None:
            shutil.rmtree(path, ignore_errors=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            group = zarr.open_group(path, mode="w", zarr_format=3,
                                    attributes={FORMAT: state})
        for leftover in path.rglob("*.partial"):  # a chunk write cut short by a kill
            leftover.unlink(missing_ok=True)
        current: dict[str, Any] = dict(group.attrs[FORMAT])  # type: ignore[arg-type]
        named = set(current["layers"].values())
        for key in list(group.group_keys()):
            if key not in named:  # a layer a cut-short rebuild left behind
                del group[key]
        return group

    def _new_layer(self, name: str) -> str:
        """Fresh arrays for layer `name`, drawn whole from the store. The state names them
        and records their whole extent as pending in one write, so a kill at any point
        leaves either the old layer or a new one that the next sync finishes drawing."""
        index = 0
        while f"layer{index:03d}" in self.group or f"layer{index:03d}" in self._state[
                "layers"].values():
            index += 1
        key = f"layer{index:03d}"
        sub = self.group.create_group(key, attributes={"class_name": name})
        h, w = self.shape
        for k, d in enumerate(self.downsamples):
            lshape = (math.ceil(h / d), math.ceil(w / d))
            sub.create_array(str(k), shape=lshape, dtype=self.dtype, fill_value=0,
                             chunks=(min(self.chunk, lshape[0]), min(self.chunk, lshape[1])),
                             dimension_names=("y", "x"), config={"write_empty_chunks": False})
        layers = {**self._state["layers"], name: key}
        pending = {k: v for k, v in self._state.get("pending", {}).items() if k != name}
        pending[name] = [[0, 0, w, h]]
        self._save_state(layers=layers, pending=pending)
        if self.store.ids(classes=[name]):
            self.draw(name, [(0, 0, w, h)])
        left = {k: v for k, v in self._state.get("pending", {}).items() if k != name}
        self._save_state(pending=left)
        return key

    def _tiles(self, level: int, windows: Iterable[Window]) -> list[tuple[int, int, int, int]]:
        """Level pixels to redraw: per chunk, the bounding rectangle of the windows' samples
        in it, as (x0, y0, x1, y1) level px."""
        h0, w0 = self.shape
        d = self.downsamples[level]
        hk, wk = math.ceil(h0 / d), math.ceil(w0 / d)
        c = self.chunk
        per_chunk: dict[tuple[int, int], list[int]] = {}
        for x0, y0, x1, y1 in windows:
            lx0, lx1 = _level_span(x0, x1, d, wk, w0)
            ly0, ly1 = _level_span(y0, y1, d, hk, h0)
            if lx1 <= lx0 or ly1 <= ly0:
                continue
            for cr in range(ly0 // c, (ly1 - 1) // c + 1):
                for cc in range(lx0 // c, (lx1 - 1) // c + 1):
                    box = [max(lx0, cc * c), max(ly0, cr * c), min(lx1, (cc + 1) * c),
                           min(ly1, (cr + 1) * c)]
                    old = per_chunk.get((cr, cc))
                    per_chunk[(cr, cc)] = box if old is None else [
                        min(old[0], box[0]), min(old[1], box[1]), max(old[2], box[2]),
                        max(old[3], box[3])]
        return [tuple(b) for b in per_chunk.values()]  # type: ignore[misc]

    def _draw_tile(self, name: str, array: zarr.Array, d: float,
                   tile: tuple[int, int, int, int]) -> None:
        x0, y0, x1, y1 = tile
        h0, w0 = self.shape
        xs = np.minimum(np.floor((np.arange(x0, x1) + 0.5) * d), w0 - 1) + 0.5
        ys = np.minimum(np.floor((np.arange(y0, y1) + 0.5) * d), h0 - 1) + 0.5
        query = (math.floor(xs[0]), math.floor(ys[0]), math.floor(xs[-1]) + 1,
                 math.floor(ys[-1]) + 1)
        ids, bounds, geometries = self.store.shapes(query, class_name=name)
        block = paint(ids, bounds, geometries, xs, ys, dtype=np.dtype(self.dtype))
        array[y0:y1, x0:x1] = block


def paint(ids: np.ndarray, bounds: np.ndarray, geometries: list, xs: np.ndarray,
          ys: np.ndarray, *, dtype: np.dtype) -> np.ndarray:
    """A (len(ys), len(xs)) label block: each object's id where its geometry covers a sample,
    later objects on top. Small objects are tested point by point in one vectorised call."""
    block = np.zeros((len(ys), len(xs)), dtype=dtype)
    if len(ids) == 0:
        return block
    ix0 = np.searchsorted(xs, bounds[:, 0], side="left")
    ix1 = np.searchsorted(xs, bounds[:, 2], side="left")
    iy0 = np.searchsorted(ys, bounds[:, 1], side="left")
    iy1 = np.searchsorted(ys, bounds[:, 3], side="left")
    nx, ny = np.maximum(ix1 - ix0, 0), np.maximum(iy1 - iy0, 0)
    count = nx * ny
    rows_out: list[np.ndarray] = []
    cols_out: list[np.ndarray] = []
    order_out: list[np.ndarray] = []
    small = np.flatnonzero((count > 0) & (count <= SMALL))
    if small.size:
        n = count[small]
        owner = np.repeat(small, n)
        k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        rows = iy0[owner] + k // nx[owner]
        cols = ix0[owner] + k % nx[owner]
        geoms = np.asarray(geometries, dtype=object)[owner]
        inside = shapely.contains_xy(geoms, xs[cols], ys[rows])
        rows_out.append(rows[inside])
        cols_out.append(cols[inside])
        order_out.append(owner[inside])
    for index in np.flatnonzero(count > SMALL):
        mask = rasterize(geometries[index], xs[ix0[index]:ix1[index]],
                         ys[iy0[index]:iy1[index]])
        r, c = np.nonzero(mask)
        rows_out.append(r + iy0[index])
        cols_out.append(c + ix0[index])
        order_out.append(np.full(len(r), index))
    if not rows_out:
        return block
    rows, cols = np.concatenate(rows_out), np.concatenate(cols_out)
    order = np.concatenate(order_out)
    flat = rows * len(xs) + cols
    by_order = np.argsort(order, kind="stable")[::-1]  # the latest object first
    _, first = np.unique(flat[by_order], return_index=True)
    winners = by_order[first]
    block.reshape(-1)[flat[winners]] = ids[order[winners]]
    return block


def _level_span(a0: int, a1: int, d: float, n_level: int, n0: int) -> tuple[int, int]:
    """Level pixels whose sample (the level-0 pixel under their centre) lies in [a0, a1)."""
    lo = max(0, math.floor(a0 / d - 0.5) - 1)
    hi = min(n_level, math.ceil(a1 / d) + 1)
    src = np.minimum(np.floor((np.arange(lo, hi) + 0.5) * d), n0 - 1)
    sel = np.flatnonzero((src >= a0) & (src < a1))
    if sel.size == 0:
        return 0, 0
    return lo + int(sel[0]), lo + int(sel[-1]) + 1


def _read_only_folder(store: ObjectStore) -> Path:
    """Rasters of a read-only store live in the user cache (they are only a view)."""
    import hashlib

    from ..paths import cache_home

    digest = hashlib.sha1(str(store.path.resolve()).encode()).hexdigest()[:12]
    folder = cache_home() / "render" / digest
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_shape(rasters: ObjectRasters, dimensions: tuple[int, int]) -> None:
    w, h = dimensions
    if rasters.shape != (h, w):
        raise StoreError(f"the rasters of {rasters.store.path} are {rasters.shape[1]}x"
                         f"{rasters.shape[0]} px but the slide is {w}x{h}")
