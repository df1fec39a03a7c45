"""Object store size and speed: the SQLite `ObjectStore` up to 1,000,000 nuclei, against the
release-0.1 zarr `LabelStore` at the sizes that one can reach.

Run: ``.venv/bin/python benchmarks/bench_store.py [--quick] [--repeat N]``

A virtual 100,000 x 100,000 px slide (0.25 µm/px, downsamples 1, 4, 16, 64) is filled with
nucleus-sized objects at tissue density: one nucleus per 64 x 64 px cell (about 3,900 per mm²),
cells filled in 2,048 px wide strips, so that every store size from 1,000 objects up has full
2,000 x 2,000 px viewports. The objects are 64 ellipses (radius 6-12 px, axis ratio up to 1.3,
any angle), each traced once from a boolean mask with `mask_to_geometry` (exact pixel-edge
outlines, 24-64 vertices) and translated (jittered) into place; every object keeps a model,
score and box prompt, as pipeline objects do. The store is filled with `add_many` in
transactions of 10,000, by the same writer that then edits it (a batch run, then clicks).

At each size (full: 1k, 3k, 10k, 100k, 1M; ``--quick``: 1k, 10k, 100k):

- file: bytes of objects.sqlite + -wal after a checkpoint, per object; open: `ObjectStore.open`
  (read-only, with SQLite's quick_check);
- add / refine / undo / delete: medians of ``--repeat`` single-object operations, each its own
  transaction: add one nucleus at a random filled place; refine a random live object (a new
  outline); undo an add; delete a random live object. "undo, second writer" is the same undo
  done by a second store instance (another viewer) that made only that one change;
- add + draw: `add` and then `ObjectRasters.sync`, the label pyramid redrawn where the object
  lies, at every level (what the viewer does after a click; the bulk fill counts as drawn);
- viewport: `query` of a random 2,000 x 2,000 px window of the filled area (live objects with
  their geometries), median; count: `count()`;
- RSS: the process's peak RSS while filling up to this size (sampled every 20 ms) and after
  the edits;
- export: `export_geojson` of every live object at 1k, 3k and 100k, once, with the peak RSS
  of the process during the export (sampled every 20 ms). Not at 1M: the export holds every
  feature in memory (about 14 KB per object at its peak, some 14 GB for 10^6 objects);
- at the largest size, one tissue region (a 256-gon of radius 2,000 px over some 3,000 nuclei)
  added, refined, deleted and the deletion undone: the hierarchy's work for a big parent.

Baseline, in the same process, on the same objects: the release-0.1 `LabelStore` (git commit
1439e83, extracted at run time into a temporary folder and imported as ``napari_wsi_sam_v01``),
at 1k and 3k objects only (``--quick``: 1k): its undo data grows with n² and filling 3,000
objects takes minutes. It is filled without fsync, then measured with the release's default
(durable, fsync) writes. Its refine is the 0.1 widget's: remove the newest object, add the new
mask; its delete is `remove_object` of a random object; its viewport reads the window's
objects' masks (`object_masks`) and traces them; its export is its own `export_geojson`.
Its medians are of ``--repeat`` / 4 operations (at least 3), its deletes of 3 (seconds each).
Ratios are new / old at equal sizes. Wall times are printed, never asserted.
"""

from __future__ import annotations

import argparse
import math
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import shapely
from shapely.geometry import Point

from napari_wsi_sam.pipeline.objects import export_objects
from napari_wsi_sam.polygons import mask_to_geometry
from napari_wsi_sam.store.object_store import NewObject, ObjectStore
from napari_wsi_sam.store.rendering import ObjectRasters

SIDE = 100_000
DOWNSAMPLES = [1.0, 4.0, 16.0, 64.0]
MPP = (0.25, 0.25)
PITCH = 64  # px between nucleus cells
STRIP_CELLS = 32  # cells across one strip (2,048 px)
ROWS = 1560  # cells down one strip (99,840 px)
PER_STRIP = STRIP_CELLS * ROWS
VIEW = 2000
CHUNK = 10_000
N_SHAPES = 64
MAX_SIDE = 34  # px, the largest shape's mask side
BASELINE_COMMIT = "1439e83"
REPO = Path(__file__).resolve().parents[1]
CLASS = "nucleus"
MODEL = "mobile_sam"


# ------------------------------------------------------------------------------ objects
@dataclass(frozen=True)
class Shape:
    mask: np.ndarray  # (side, side) bool
    geometry: Any  # its outline, window (0, 0, side, side)


def nucleus_shapes(rng: np.random.Generator) -> list[Shape]:
    out = []
    for _ in range(N_SHAPES):
        r, e, theta = rng.uniform(6, 12), rng.uniform(1.0, 1.3), rng.uniform(0, math.pi)
        side = math.ceil(2 * r * e) + 2
        yy, xx = np.mgrid[:side, :side] + 0.5 - side / 2
        u = xx * math.cos(theta) + yy * math.sin(theta)
        v = -xx * math.sin(theta) + yy * math.cos(theta)
        mask = (u / (r * e)) ** 2 + (v / r) ** 2 < 1
        out.append(Shape(mask, mask_to_geometry(mask, (0, 0, side, side))))
    return out


class Layout:
    """Where object j lies: shape kind[j], mask window origin (x[j], y[j]), level-0 px."""

    def __init__(self, n: int, shapes: list[Shape], seed: int) -> None:
        rng = np.random.default_rng(seed)
        j = np.arange(n)
        strip, rest = np.divmod(j, PER_STRIP)
        row, col = np.divmod(rest, STRIP_CELLS)
        self.kind = rng.integers(0, len(shapes), n)
        jitter = rng.integers(0, PITCH - MAX_SIDE + 1, (2, n))
        self.x = strip * STRIP_CELLS * PITCH + col * PITCH + jitter[0]
        self.y = row * PITCH + jitter[1]
        self.shapes = shapes
        self.base = np.array([s.geometry for s in shapes], dtype=object)
        self.counts = shapely.get_num_coordinates(self.base)

    def geometries(self, kind: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The shapes `kind` translated to (x, y), all in one vectorised call."""
        base = self.base[kind]
        offsets = np.repeat(np.stack([x, y], axis=1).astype(float), self.counts[kind], axis=0)
        return shapely.transform(base, lambda xy: xy + offsets)

    def new_objects(self, start: int, stop: int) -> list[NewObject]:
        sl = slice(start, stop)
        geoms = self.geometries(self.kind[sl], self.x[sl], self.y[sl])
        return [NewObject(g, CLASS, model=MODEL, score=0.9, score_kind="predicted_iou",
                          prompt=prompt(g)) for g in geoms]

    def random_place(self, n: int, rng: np.random.Generator) -> tuple[int, int, int]:
        """A shape kind and a mask origin inside a random filled cell (beside or over its
        nucleus)."""
        j = int(rng.integers(0, n))
        dx, dy = (int(v) for v in rng.integers(0, PITCH - MAX_SIDE + 1, 2))
        return (int(rng.integers(0, len(self.shapes))), int(self.x[j] - self.x[j] % PITCH + dx),
                int(self.y[j] - self.y[j] % PITCH + dy))


def prompt(geometry: Any) -> dict[str, Any]:
    x0, y0, x1, y1 = geometry.bounds
    return {"box": [x0 - 2.0, y0 - 2.0, x1 + 2.0, y1 + 2.0], "points": [], "labels": [],
            "hr_mpp": MPP[0]}


def random_window(n: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A VIEW x VIEW window wholly inside the area the first n objects fill."""
    full = n // PER_STRIP
    if full:
        x0 = int(rng.integers(0, full * STRIP_CELLS * PITCH - VIEW + 1))
        y0 = int(rng.integers(0, ROWS * PITCH - VIEW + 1))
    else:
        x0 = int(rng.integers(0, STRIP_CELLS * PITCH - VIEW + 1))
        y0 = int(rng.integers(0, max(n // STRIP_CELLS * PITCH - VIEW, 0) + 1))
    return x0, y0, x0 + VIEW, y0 + VIEW


# ------------------------------------------------------------------------------ measuring
class PeakRss:
    """The process's peak RSS (MB) while inside, sampled every 20 ms by a thread."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.proc.memory_info().rss / 2**20)
            if self._stop.wait(0.02):
                return

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss / 2**20)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def store_bytes(path: Path) -> int:
    """objects.sqlite + its -wal after a checkpoint (a second connection; the store is idle)."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ------------------------------------------------------------------------------ new store
class NewBench:
    def __init__(self, root: Path, layout: Layout, n_max: int, repeat: int, seed: int) -> None:
        self.path = root / "store" / "objects.sqlite"
        self.path.parent.mkdir(parents=True)
        self.store = ObjectStore.create(self.path, meta={
            "dimensions": [SIDE, SIDE], "mpp": list(MPP), "downsamples": DOWNSAMPLES,
            "store_id": "bench-store"})
        self.rasters = ObjectRasters(self.store, shape=(SIDE, SIDE), downsamples=DOWNSAMPLES,
                                     folder=self.path.parent / "render")
        self.rasters.levels(CLASS)  # the layer exists (empty store: nothing to draw)
        self.layout = layout
        self.repeat = repeat
        self.rng = np.random.default_rng(seed + 1)
        self.ids = np.zeros(n_max, dtype=np.int64)
        self.alive = np.zeros(n_max, dtype=bool)
        self.n = 0
        self.build_s = self.insert_s = 0.0

    def fill(self, target: int) -> None:
        while self.n < target:
            stop = min(target, (self.n // CHUNK + 1) * CHUNK)
            start = time.perf_counter()
            objects = self.layout.new_objects(self.n, stop)
            self.build_s += time.perf_counter() - start
            start = time.perf_counter()
            self.ids[self.n:stop] = self.store.add_many(objects)
            self.insert_s += time.perf_counter() - start
            self.alive[self.n:stop] = True
            self.n = stop
        self._skip_drawing()

    def _skip_drawing(self) -> None:
        """The rasters count every change so far as drawn (drawing 10^6 objects into a
        100,000² pyramid is a rebuild, not what this measures); the next sync draws only
        what changes after this."""
        self.rasters._save_state(synced_seq=self.store.last_seq())

    def _geometry(self, kind: int, x: int, y: int) -> Any:
        return self.layout.geometries(np.array([kind]), np.array([x]), np.array([y]))[0]

    def _random_live(self) -> tuple[int, int]:
        while True:
            j = int(self.rng.integers(0, self.n))
            if self.alive[j]:
                return j, int(self.ids[j])

    def measure(self, *, export_path: Path | None) -> dict[str, float]:
        s, out = self.store, {}
        size = store_bytes(self.path)
        out["file MB"] = size / 2**20
        out["bytes per object"] = size / self.n
        out["open ms"] = 1000 * timed(lambda: ObjectStore.open(self.path, read_only=True).close())
        lay, rng = self.layout, self.rng

        def add_geometry() -> Any:
            return self._geometry(*lay.random_place(self.n, rng))

        adds = []
        for _ in range(self.repeat):
            g = add_geometry()
            adds.append(timed(lambda g=g: s.add(g, class_name=CLASS, model=MODEL, score=0.9,
                                                score_kind="predicted_iou", prompt=prompt(g))))
        out["add ms"] = median_ms(adds)

        draws = []
        for _ in range(self.repeat):
            g = add_geometry()
            self._skip_drawing()

            def add_and_draw(g: Any = g) -> None:
                s.add(g, class_name=CLASS, model=MODEL, score=0.9, score_kind="predicted_iou",
                      prompt=prompt(g))
                self.rasters.sync()
            draws.append(timed(add_and_draw))
        out["add + draw ms"] = median_ms(draws)

        refines = []
        for _ in range(self.repeat):
            j, object_id = self._random_live()
            kind = (int(lay.kind[j]) + 1) % N_SHAPES
            g = self._geometry(kind, int(lay.x[j]), int(lay.y[j]))
            refines.append(timed(lambda i=object_id, g=g: s.refine(
                i, g, model=MODEL, score=0.95, score_kind="predicted_iou", prompt=prompt(g))))
        out["refine ms"] = median_ms(refines)

        undos = []
        for _ in range(self.repeat):
            s.add(add_geometry(), class_name=CLASS, model=MODEL)
            undos.append(timed(s.undo))
        out["undo ms"] = median_ms(undos)

        other, undos = ObjectStore.open(self.path, check=False), []
        for _ in range(self.repeat):
            other.add(add_geometry(), class_name=CLASS, model=MODEL)
            undos.append(timed(other.undo))
        other.close()
        out["undo, second writer ms"] = median_ms(undos)

        deletes = []
        for _ in range(self.repeat):
            j, object_id = self._random_live()
            deletes.append(timed(lambda i=object_id: s.delete([i])))
            self.alive[j] = False
        out["delete ms"] = median_ms(deletes)

        views, found = [], []
        for _ in range(self.repeat):
            window = random_window(self.n, rng)
            start = time.perf_counter()
            objects = s.query(window)
            views.append(time.perf_counter() - start)
            found.append(len(objects))
        out["viewport ms"] = median_ms(views)
        out["objects per viewport"] = statistics.mean(found)
        out["count ms"] = median_ms([timed(s.count) for _ in range(self.repeat)])
        out["rss MB"] = psutil.Process().memory_info().rss / 2**20

        if export_path is not None:
            with PeakRss() as rss:
                written = [0]
                out["export s"] = timed(lambda: written.__setitem__(
                    0, export_objects(s, export_path, mpp=MPP)))
            out["export MB"] = export_path.stat().st_size / 2**20
            out["export RSS MB"] = rss.peak
            out["exported"] = written[0]
            export_path.unlink()
        return out

    def region(self) -> dict[str, float]:
        """One tissue region (a 256-gon, radius 2,000 px) over the filled area: the hierarchy
        work of adding, refining and deleting an object with thousands of children."""
        s = self.store
        x, y, r = PITCH * STRIP_CELLS, 5000, 2000
        outline = Point(x, y).buffer(r, 64)
        out: dict[str, float] = {}
        ids: list[int] = []
        out["add ms"] = 1000 * timed(lambda: ids.append(s.add(outline, class_name="tumor")))
        out["children"] = len([o for o in s.query((x - r, y - r, x + r, y + r))
                               if o.parent == ids[0]])
        out["refine ms"] = 1000 * timed(lambda: s.refine(ids[0], Point(x, y).buffer(0.8 * r, 64)))
        out["delete ms"] = 1000 * timed(lambda: s.delete(ids))
        out["undo ms"] = 1000 * timed(s.undo)
        return out

    def close(self) -> None:
        self.store.close()


# ------------------------------------------------------------------------------ old store
def load_baseline(root: Path) -> Any | None:
    """(LabelStore, export_objects, mask_to_geometry) of release 0.1, or None (one line)."""
    target = root / "v01"
    target.mkdir()
    if shutil.which("git") is None:
        print("baseline skipped: git is not available")
        return None
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", BASELINE_COMMIT, "src/napari_wsi_sam"],
            check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as error:
        why = getattr(error, "stderr", b"") or str(error).encode()
        print(f"baseline skipped: commit {BASELINE_COMMIT} cannot be extracted "
              f"({why.decode(errors='replace').strip().splitlines()[-1]})")
        return None
    (target / "src" / "napari_wsi_sam").rename(target / "src" / "napari_wsi_sam_v01")
    sys.path.insert(0, str(target / "src"))
    try:
        from napari_wsi_sam_v01.annotations.labels import LabelStore
        from napari_wsi_sam_v01.annotations.polygons import mask_to_geometry as old_trace
        from napari_wsi_sam_v01.pipeline.objects import export_geojson as old_export
    except ImportError as error:
        print(f"baseline skipped: release 0.1 does not import here ({error})")
        return None
    return LabelStore, old_export, old_trace


class OldBench:
    def __init__(self, root: Path, layout: Layout, baseline: Any, repeat: int,
                 seed: int) -> None:
        label_store, self.export, self.trace = baseline
        self.folder = root / "labels"
        self.store = label_store.create(self.folder, shape=(SIDE, SIDE),
                                        downsamples=DOWNSAMPLES, mpp=MPP, durable=False)
        self.open = label_store.open
        self.layout = layout
        self.repeat = repeat
        self.rng = np.random.default_rng(seed + 1)
        self.n = 0
        self.bulk: list[int] = []
        self.fill_s = 0.0

    def _add(self, kind: int, x: int, y: int) -> int:
        shape = self.layout.shapes[kind]
        side = shape.mask.shape[0]
        geometry = self.layout.geometries(np.array([kind]), np.array([x]), np.array([y]))[0]
        return self.store.add_object(shape.mask, (x, y, x + side, y + side), class_name=CLASS,
                                     color="#ff00ff", model=MODEL, score=0.9,
                                     prompt=prompt(geometry))

    def fill(self, target: int) -> None:
        self.store.durable = False
        start = time.perf_counter()
        lay = self.layout
        for j in range(self.n, target):
            self.bulk.append(self._add(int(lay.kind[j]), int(lay.x[j]), int(lay.y[j])))
        self.n = target
        self.fill_s += time.perf_counter() - start
        self.store.durable = True  # the release's default for every measured change

    def measure(self, *, export_path: Path) -> dict[str, float]:
        st, lay, rng, out = self.store, self.layout, self.rng, {}
        size = folder_bytes(self.folder)
        out["file MB"] = size / 2**20
        out["bytes per object"] = size / self.n
        out["open ms"] = 1000 * timed(lambda: self.open(self.folder))
        few = max(3, self.repeat // 4)
        out["add ms"] = median_ms([timed(lambda: self._add(*lay.random_place(self.n, rng)))
                                   for _ in range(few)])
        out["add + draw ms"] = out["add ms"]  # add_object paints every level itself

        def refine_newest() -> None:
            newest = max(st.objects)
            record = st.objects[newest]
            st.remove_object(newest)
            self._add(int(rng.integers(0, N_SHAPES)), record.window[0], record.window[1])
        out["refine ms"] = median_ms([timed(refine_newest) for _ in range(few)])
        undos = []
        for _ in range(few):
            self._add(*lay.random_place(self.n, rng))
            undos.append(timed(st.undo))
        out["undo ms"] = median_ms(undos)

        def viewport() -> int:
            x0, y0, x1, y1 = random_window(self.n, rng)
            ids = [i for i, r in st.objects.items() if r.window[0] < x1 and r.window[2] > x0
                   and r.window[1] < y1 and r.window[3] > y0]
            return len([self.trace(m, w) for _, m, w in st.object_masks(ids)])
        out["viewport ms"] = median_ms([timed(viewport) for _ in range(few)])
        with PeakRss() as rss:
            out["export s"] = timed(lambda: self.export(st, export_path, mpp=MPP))
        out["export RSS MB"] = rss.peak
        export_path.unlink()
        deletes = []
        for _ in range(3):  # each patches the undo data of every later object: seconds
            victim = self.bulk.pop(int(rng.integers(0, len(self.bulk))))
            deletes.append(timed(lambda v=victim: st.remove_object(v)))
        out["delete ms"] = median_ms(deletes)
        return out


# ------------------------------------------------------------------------------ printing
GROWTH_ROWS = [
    ("file MB", "file MB (sqlite + wal, checkpointed)", "{:.1f}"),
    ("bytes per object", "bytes per object", "{:.0f}"),
    ("open ms", "open, read-only with quick_check, ms", "{:.1f}"),
    ("add ms", "add one object, ms", "{:.2f}"),
    ("add + draw ms", "add + draw into the label pyramid, ms", "{:.1f}"),
    ("refine ms", "refine a random object, ms", "{:.2f}"),
    ("undo ms", "undo an add (writer of the fill), ms", "{:.2f}"),
    ("undo, second writer ms", "undo an add (second writer), ms", "{:.2f}"),
    ("delete ms", "delete a random object, ms", "{:.2f}"),
    ("viewport ms", "viewport 2000² query, ms", "{:.1f}"),
    ("objects per viewport", "objects per viewport", "{:.0f}"),
    ("count ms", "count(), ms", "{:.2f}"),
    ("export s", "export GeoJSON, s", "{:.2f}"),
    ("export RSS MB", "peak RSS during export, MB", "{:.0f}"),
    ("rss MB", "peak RSS during fill + edits, MB", "{:.0f}"),
]

COMPARE_ROWS = [
    ("bytes per object", "bytes per object"),
    ("open ms", "open, ms"),
    ("add ms", "add one object, ms"),
    ("add + draw ms", "add, drawn into the label pyramid, ms"),
    ("refine ms", "refine, ms"),
    ("undo ms", "undo an add, ms"),
    ("delete ms", "delete a random object, ms"),
    ("viewport ms", "viewport 2000² with geometries, ms"),
    ("export s", "export GeoJSON, s"),
    ("export RSS MB", "peak RSS during export, MB"),
]


def fmt(value: float | None, spec: str = "{:.3g}") -> str:
    if value is None:
        return "-"
    if spec == "{:.3g}":
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return spec.format(value)


def print_growth(results: dict[int, dict[str, float]]) -> None:
    sizes = sorted(results)
    label_w = 42
    head = f"{'new store, objects in store':{label_w}s}" + "".join(f"{n:>11,d}" for n in sizes)
    print(head + f"{'last/first':>12s}")
    for key, label, spec in GROWTH_ROWS:
        values = [results[n].get(key) for n in sizes]
        row = f"{label:{label_w}s}" + "".join(f"{fmt(v, spec):>11s}" for v in values)
        if values[0] and values[-1] is not None and key not in ("file MB", "export s",
                                                                "objects per viewport"):
            row += f"{values[-1] / values[0]:>11.2f}x"
        print(row)


def ratio_text(ratio: float) -> str:
    """Two significant digits, never in e-notation (0.34, 0.0029, 0.000028)."""
    return np.format_float_positional(ratio, precision=2, unique=True, fractional=False,
                                      trim="-")


def print_compare(new: dict[int, dict[str, float]], old: dict[int, dict[str, float]]) -> None:
    sizes = sorted(old)
    label_w = 40
    head = f"{'vs release 0.1 LabelStore':{label_w}s}"
    for n in sizes:
        head += f"{f'new {n:,}':>10s}{f'old {n:,}':>10s}{'new/old':>11s}"
    print(head)
    for key, label in COMPARE_ROWS:
        row = f"{label:{label_w}s}"
        for n in sizes:
            a, b = new[n].get(key), old[n].get(key)
            ratio = ratio_text(a / b) if a is not None and b else "-"
            row += f"{fmt(a):>10s}{fmt(b):>10s}{ratio:>11s}"
        print(row)


def verdict(value: float, target: float) -> str:
    return "met" if value < target else "MISSED"


# ------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="up to 100,000 objects, baseline at 1,000 (about 2 minutes)")
    parser.add_argument("--repeat", type=int, default=20,
                        help="repeats of each single-object operation (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the release-0.1 LabelStore")
    parser.add_argument("--sizes", type=int, nargs="+", help="store sizes (default: see above)")
    parser.add_argument("--old-sizes", type=int, nargs="+", help="baseline sizes")
    args = parser.parse_args()
    sizes = sorted(args.sizes or ([1_000, 10_000, 100_000] if args.quick else
                                  [1_000, 3_000, 10_000, 100_000, 1_000_000]))
    old_sizes = [n for n in sorted(args.old_sizes or ([1_000] if args.quick else
                                                      [1_000, 3_000])) if n in sizes]
    export_at = {1_000, 3_000, 100_000}
    started = time.perf_counter()
    shapes = nucleus_shapes(np.random.default_rng(args.seed))
    layout = Layout(max(sizes), shapes, args.seed)
    vertices = [len(s.geometry.exterior.coords) - 1 for s in shapes]
    print(f"slide {SIDE:,} x {SIDE:,} px, {MPP[0]} µm/px, downsamples "
          f"{', '.join(f'{d:g}' for d in DOWNSAMPLES)}; one nucleus per {PITCH}² px cell; "
          f"{N_SHAPES} traced shapes, {min(vertices)}-{max(vertices)} vertices; "
          f"median of {args.repeat} per operation; {psutil.cpu_count()} CPUs; RSS after "
          f"imports {psutil.Process().memory_info().rss / 2**20:.0f} MB")

    new_results: dict[int, dict[str, float]] = {}
    old_results: dict[int, dict[str, float]] = {}
    region: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_store_") as tmp:
        root = Path(tmp)
        bench = NewBench(root, layout, max(sizes), args.repeat, args.seed)
        for n in sizes:
            with PeakRss() as rss:
                bench.fill(n)
            result = bench.measure(export_path=root / "export.geojson" if n in export_at
                                   else None)
            result["rss MB"] = max(rss.peak, result["rss MB"])
            new_results[n] = result
            print(f"  new store at {n:,}: filled in {bench.build_s + bench.insert_s:.1f} s so "
                  f"far; {time.perf_counter() - started:.0f} s elapsed", flush=True)
        region = bench.region()
        fill = (bench.build_s, bench.insert_s, bench.n)
        bench.close()
        shutil.rmtree(bench.path.parent)

        baseline = None if args.no_baseline else load_baseline(root)
        if baseline is not None:
            print(f"  baseline: release 0.1 LabelStore from git commit {BASELINE_COMMIT}, "
                  "imported as napari_wsi_sam_v01", flush=True)
            old = OldBench(root, layout, baseline, args.repeat, args.seed)
            for n in old_sizes:
                old.fill(n)
                old_results[n] = old.measure(export_path=root / "old.geojson")
                print(f"  old store at {n:,}: filled in {old.fill_s:.0f} s so far; "
                      f"{time.perf_counter() - started:.0f} s elapsed", flush=True)

    print()
    build_s, insert_s, total = fill
    print(f"fill: {total:,} objects, geometries built in {build_s:.1f} s, add_many in "
          f"{insert_s:.1f} s ({1e6 * insert_s / total:.0f} µs per object, transactions of "
          f"{CHUNK:,})")
    print_growth(new_results)
    print(f"tissue region (256-gon, r 2,000 px) over {region['children']:.0f} nuclei at "
          f"{max(sizes):,}: add {region['add ms']:.0f} ms, refine {region['refine ms']:.0f} ms,"
          f" delete {region['delete ms']:.0f} ms, undo the delete {region['undo ms']:.0f} ms")
    largest = new_results[max(sizes)]
    print(f"target: viewport at {max(sizes):,} objects {largest['viewport ms']:.1f} ms "
          f"(< 50 ms: {verdict(largest['viewport ms'], 50)})")
    if "export s" in new_results.get(100_000, {}):
        export = new_results[100_000]
        print(f"target: export of {export['exported']:,.0f} objects {export['export s']:.1f} s "
              f"(< 10 s: {verdict(export['export s'], 10)})")
    if old_results:
        print()
        print_compare(new_results, old_results)
        print(f"release 0.1 measured at {', '.join(f'{n:,}' for n in old_sizes)} objects only: "
              f"filling it took {old.fill_s:.0f} s (undo data grows with n²)")
    print(f"peak RSS of the process: {peak_rss_mb():.0f} MB; total "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
