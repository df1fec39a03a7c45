"""kill -9 at every phase: inserts, two writers, rendering, exports and a batch CLI run.

Each test runs the work in real child processes (``python -c CODE``), kills them with SIGKILL
at seeded random moments (or at a named point, where the moment matters), and then checks in
the parent that nothing committed was lost, nothing half-written shows, and the store opens
cleanly (`ObjectStore.open` runs SQLite's quick_check). Geometry is real traced outlines
(`mask_to_geometry`), level-0 px. No wall-time assertions: kill moments scale with measured
durations and every wait has a generous timeout.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import shapely

from napari_wsi_sam.formats import file_io
from napari_wsi_sam.pipeline.objects import export_objects
from napari_wsi_sam.polygons import mask_to_geometry
from napari_wsi_sam.store.object_store import NewObject, ObjectStore
from napari_wsi_sam.store.rendering import RENDER_DIR, ObjectRasters
from napari_wsi_sam.store.schema import DB_NAME, JOURNAL_ENV

pytestmark = [pytest.mark.slow,  # processes killed mid-write, each a fresh interpreter
              pytest.mark.skipif(sys.platform == "win32", reason="kill -9 needs POSIX signals")]

TIMEOUT = 120.0
"""Seconds any single wait for a child may take before the test fails (never reached)."""


# ----------------------------------------------------------------------------- shapes
# These functions are also pasted into the children (inspect.getsource), so parent and child
# make the very same geometry from the same seed.
def nucleus(seed, dims):
    """A traced, nucleus-like outline (an irregular ellipse, 4-12 px radius) placed by seed."""
    rng = np.random.default_rng(seed)
    r = rng.uniform(4, 12)
    n = int(2 * r) + 3
    yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2
    wobble = 1 + 0.25 * rng.uniform() * np.sin(3 * np.arctan2(yy, xx) + rng.uniform(0, 6.28))
    mask = (xx / rng.uniform(0.6, 1.0)) ** 2 + yy ** 2 <= (r * wobble) ** 2
    x0 = int(rng.integers(0, dims[0] - n))
    y0 = int(rng.integers(0, dims[1] - n))
    return mask_to_geometry(mask, (x0, y0, x0 + n, y0 + n))


def region(seed, dims, radius):
    """A large traced region (a lobed blob with 8-px steps, about `radius` px) placed by seed."""
    rng = np.random.default_rng(seed)
    n = int(2.6 * radius / 8) + 3
    yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2
    lobes = 1 + 0.3 * np.sin(int(rng.integers(2, 6)) * np.arctan2(yy, xx) + rng.uniform(0, 6.28))
    coarse = xx ** 2 + (yy / rng.uniform(0.7, 1.0)) ** 2 <= (radius / 8 * lobes) ** 2
    mask = np.kron(coarse, np.ones((8, 8), dtype=bool))
    size = mask.shape[0]
    x0 = int(rng.integers(0, max(1, dims[0] - size)))
    y0 = int(rng.integers(0, max(1, dims[1] - size)))
    return mask_to_geometry(mask[: dims[1] - y0, : dims[0] - x0],
                            (x0, y0, min(dims[0], x0 + size), min(dims[1], y0 + size)))


def same_geometry(a, b) -> bool:
    """Exactly the same outline (vertex for vertex, after normalising ring order)."""
    return bool(shapely.equals_exact(shapely.normalize(a), shapely.normalize(b), tolerance=0))


PRELUDE = "\n".join([
    "import json, os, random, signal, sys, time",
    "from pathlib import Path",
    "import numpy as np",
    "from napari_wsi_sam.store.object_store import NewObject, ObjectStore",
    "from napari_wsi_sam.polygons import mask_to_geometry",
    "from napari_wsi_sam.errors import StoreError",
    textwrap.dedent(inspect.getsource(nucleus)),
    textwrap.dedent(inspect.getsource(region)),
    "ARGS = json.loads(sys.argv[1])",
])


def child_code(body: str) -> str:
    return PRELUDE + "\n" + textwrap.dedent(body)


class Child:
    """A child process whose stdout lines are collected as they arrive (a thread reads them).
    `wait_for` returns the next line with a prefix; `kill` sends SIGKILL and reaps it."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines: list[str] = []
        self.err: list[str] = []
        self._pos = 0
        self._eof = False
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._pump, daemon=True),
                         threading.Thread(target=self._pump_err, daemon=True)]
        for thread in self._threads:
            thread.start()

    @classmethod
    def python(cls, body: str, args: dict) -> Child:
        """``python -c PRELUDE+body`` with `args` as ARGS."""
        return cls([sys.executable, "-c", child_code(body), json.dumps(args)])

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.endswith("\n"):  # cut short by the kill: never reported
                break
            with self._cond:
                self.lines.append(line[:-1])
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.err[-40:])

    def wait_for(self, prefix: str, timeout: float = TIMEOUT) -> str:
        """The next line (after those returned before) starting with `prefix`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._pos < len(self.lines):
                    line = self.lines[self._pos]
                    self._pos += 1
                    if line.startswith(prefix):
                        return line
                if self._eof:
                    raise AssertionError(f"the child ended (rc {self.proc.poll()}) before "
                                         f"{prefix!r}:\n{self.stderr}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {prefix!r} from the child in {timeout} s:\n"
                                         f"{self.stderr}")
                self._cond.wait(left)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.wait()

    def finish(self) -> int:
        """Wait for a normal exit; fails the test on a non-zero status."""
        rc = self.wait()
        assert rc == 0, f"the child failed (rc {rc}):\n{self.stderr}"
        return rc

    def wait(self) -> int:
        """Wait for the child to end by itself; its exit status."""
        rc = self.proc.wait(TIMEOUT)
        for thread in self._threads:
            thread.join(TIMEOUT)
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:  # the pipe's reader is gone
                pass
        return rc


def new_store(path: Path, dims: tuple[int, int], downsamples=(1.0, 4.0, 16.0)) -> Path:
    meta = {"format": "napari-wsi-sam-objects", "store_id": f"crash-{path.parent.name}",
            "slide_path": "synthetic.svs", "dimensions": list(dims), "mpp": [0.5, 0.5],
            "downsamples": list(downsamples)}
    ObjectStore.create(path, meta=meta).close()
    return path


def check_tables(db: Path) -> None:
    """The store's tables agree with each other (read with a plain SQLite connection)."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        assert one("PRAGMA integrity_check") == "ok"
        assert one("SELECT count(*) FROM versions v LEFT JOIN objects o ON o.id = v.object_id "
                   "WHERE o.id IS NULL") == 0, "versions of no object"
        assert one("SELECT count(*) FROM objects o LEFT JOIN versions v ON v.vid = o.current "
                   "AND v.object_id = o.id WHERE v.vid IS NULL") == 0, "objects with no version"
        assert one("SELECT count(*) FROM changes c LEFT JOIN versions v ON v.vid = c.after_vid "
                   "WHERE v.vid IS NULL") == 0, "changes to no version"
        live = {r[0] for r in conn.execute("SELECT id FROM objects WHERE deleted = 0")}
        indexed = [r[0] for r in conn.execute("SELECT id FROM live_bounds")]
        assert sorted(indexed) == sorted(live), "the bounds index disagrees with live objects"
        assert one("SELECT count(*) FROM live_bounds b JOIN objects o ON o.id = b.id JOIN "
                   "versions v ON v.vid = o.current WHERE b.x0 != v.x0 OR b.x1 != v.x1 OR "
                   "b.y0 != v.y0 OR b.y1 != v.y1") == 0, "indexed bounds are not the object's"
    finally:
        conn.close()


# ----------------------------------------------------------------------------- 1. mid-insert
INSERT_CHILD = """
store = ObjectStore.open(Path(ARGS["db"]))
print("ready", flush=True)
rng = random.Random(ARGS["run"])
seed, tx = ARGS["run"] * 1_000_000, 0
while True:
    tx += 1
    tag = f"{ARGS['run']}-{tx}"
    n = rng.randint(2, 30) if tx % 3 == 0 else 1
    items = [NewObject(nucleus(seed + k, ARGS["dims"]), "nucleus", model="crash-test",
                       prompt={"seed": seed + k, "tx": tag, "size": n}) for k in range(n)]
    if n == 1:
        ids = [store.add(items[0].geometry, class_name="nucleus", model="crash-test",
                         prompt=items[0].prompt)]
    else:
        ids = store.add_many(items)
    print("ids " + " ".join(f"{i}:{seed + k}" for k, i in enumerate(ids)), flush=True)
    seed += n
"""


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_kill_mid_insert_keeps_every_committed_object(journal, tmp_path, monkeypatch):
    """Writers killed at random moments (while importing, opening, tracing or committing,
    one object or a batch per transaction): every id they reported is there with the geometry
    they wrote; batches are whole or absent; ids are unique and never reused; the store opens
    with quick_check ok and takes new objects. In WAL and in rollback-journal mode."""
    monkeypatch.setenv(JOURNAL_ENV, journal)  # the children inherit it
    dims = (20000, 20000)
    db = new_store(tmp_path / DB_NAME, dims)
    rng = random.Random(20240611)
    reported: dict[int, int] = {}  # id -> seed of its geometry
    run_of: dict[int, int] = {}
    for run in range(5):
        child = Child.python(INSERT_CHILD, {"db": str(db), "run": run + 1, "dims": dims})
        if run == 0:  # somewhere in the child's start-up: imports, open, first commits
            time.sleep(rng.uniform(0.2, 1.0))
        else:
            child.wait_for("ready")
            time.sleep(rng.uniform(0.05, 0.6))
        assert child.kill() == -signal.SIGKILL, child.stderr
        for line in child.lines:
            if line.startswith("ids "):
                for pair in line[4:].split():
                    object_id, seed = (int(v) for v in pair.split(":"))
                    assert object_id not in reported, f"id {object_id} given twice"
                    reported[object_id] = seed
                    run_of[object_id] = run + 1

        with ObjectStore.open(db) as store:  # quick_check runs here
            assert store.journal == journal
            objects = {o.id: o for o in store.iter_live()}
            total = store.count() + store.count(deleted=True)
        check_tables(db)
        assert total == len(objects), "no object may be deleted"
        missing = sorted(set(reported) - set(objects))
        assert not missing, f"committed and reported, then lost: {missing[:10]}"
        by_tx: dict[str, list[int]] = {}
        for obj in objects.values():
            seed = obj.prompt["seed"]
            assert same_geometry(obj.geometry, nucleus(seed, dims)), f"object {obj.id} differs"
            assert obj.version == 1 and obj.class_name == "nucleus"
            if obj.id in reported:
                assert reported[obj.id] == seed
            by_tx.setdefault(obj.prompt["tx"], []).append(obj.id)
        for tag, ids in by_tx.items():
            size = objects[ids[0]].prompt["size"]
            assert len(ids) == size, f"transaction {tag}: {len(ids)} of {size} objects"
        # What was committed but not yet reported is at most the one transaction in flight.
        unreported = {objects[i].prompt["tx"] for i in objects if i not in reported}
        this_run = [t for t in unreported if t.startswith(f"{run + 1}-")]
        assert unreported == set(this_run) and len(this_run) <= 1, unreported
        for i in objects:  # keep the last transaction's objects from being "unreported" later
            if i not in reported:
                reported[i] = objects[i].prompt["seed"]
                run_of[i] = run + 1
        # Ids only grow: a run never takes an id an earlier run had.
        earlier = [i for i, r in run_of.items() if r <= run]
        now = [i for i, r in run_of.items() if r == run + 1]
        if earlier and now:
            assert min(now) > max(earlier)
    assert len(reported) >= 20, "the children were killed before doing anything"
    with ObjectStore.open(db) as store:  # still writable after all the kills
        new = store.add(nucleus(7, dims), class_name="nucleus")
        assert new > max(reported) and store.count() == len(reported) + 1


BIG_BATCH_CHILD = """
from napari_wsi_sam.store import schema as store_schema
store = ObjectStore.open(Path(ARGS["db"]))
store._conn.execute("PRAGMA cache_size = 50")  # 50 pages: a big transaction spills early
pack, calls = store_schema.pack_geometry, [0]
def pack_then_die(geometry):  # the kill lands deep inside one add_many transaction
    calls[0] += 1
    if calls[0] == ARGS["kill_at"]:
        os.kill(os.getpid(), signal.SIGKILL)
    return pack(geometry)
store_schema.pack_geometry = pack_then_die
store.add_many([NewObject(nucleus(k, ARGS["dims"]), "nucleus") for k in range(ARGS["n"])])
print("not killed", flush=True)
"""


@pytest.mark.parametrize(("journal", "first"), [
    ("wal", "viewer"), ("delete", "writer"), ("delete", "viewer")])
def test_kill_mid_big_batch_leaves_none_of_it(journal, first, tmp_path, monkeypatch):
    """A 2000-object add_many killed after 1500 objects were written into its transaction
    (it spills to the file; in rollback mode that leaves a hot journal): a read-only viewer
    and a writer, whichever opens first, see the store as before the batch, none of it; the
    writer can go on."""
    monkeypatch.setenv(JOURNAL_ENV, journal)
    dims = (20000, 20000)
    db = new_store(tmp_path / DB_NAME, dims)
    with ObjectStore.open(db) as store:
        before = store.add_many([NewObject(nucleus(10**6 + k, dims), "nucleus")
                                 for k in range(50)])
    child = Child.python(BIG_BATCH_CHILD, {"db": str(db), "dims": dims, "n": 2000,
                                           "kill_at": 1500})
    assert child.wait() == -signal.SIGKILL and "not killed" not in child.lines, child.stderr
    if journal == "delete":  # a hot journal: a valid header, the file holds half the batch
        journal_file = db.with_name(db.name + "-journal")
        assert journal_file.read_bytes()[:8] == bytes.fromhex("d9d505f920a163d7")
    seq = 50
    for opener in (first, "writer" if first == "viewer" else "viewer"):
        with ObjectStore.open(db, read_only=opener == "viewer") as store:
            assert store.ids() == before and store.count(deleted=True) == 0
            assert store.last_seq() == seq
            if opener == "writer":
                assert store.add(nucleus(1, dims), class_name="nucleus") > max(before)
                before, seq = store.ids(), seq + 1
    check_tables(db)


# ----------------------------------------------------------------------------- 2. two writers
WRITER_CHILD = """
me, other = ARGS["writer"], ARGS["other"]
store = ObjectStore.open(Path(ARGS["db"]), writer=me)
rng = random.Random(ARGS["seed"])
print("ready", flush=True)
assert sys.stdin.readline().strip() == "go"
for i in range(ARGS["n"]):
    # never more than 3 ahead of the other writer, so the two really interleave
    while i - len(store.ids(classes=[other])) > 3:
        time.sleep(0.002)
    oid = store.add(nucleus(ARGS["seed"] + i, ARGS["dims"]), class_name=me, model=me,
                    prompt={"seed": ARGS["seed"] + i})
    print(f"id {oid}", flush=True)
    time.sleep(rng.uniform(0, 0.01))
print("added", flush=True)
for line in sys.stdin:
    command, *rest = line.split()
    try:
        if command == "undo":
            out = {"undone": [c.object_id for c in store.undo()]}
        elif command == "refine":
            geometry = nucleus(int(rest[1]), ARGS["dims"])
            out = {"version": store.refine(int(rest[0]), geometry, model=me)}
        elif command == "quit":
            break
    except StoreError as error:
        out = {"error": type(error).__name__, "message": str(error)}
    print("reply " + json.dumps(out), flush=True)
store.close()
"""


def reply(child: Child, command: str) -> dict:
    child.send(command)
    return json.loads(child.wait_for("reply ")[len("reply "):])


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_two_writers_share_a_store(journal, tmp_path, monkeypatch):
    """Two processes add 40 objects each at the same time: 80 live objects, 80 distinct ids.
    Each one's undo removes only its own last object (seen from a third connection); an undo
    of an object the other changed since is refused with a one-line StoreError and changes
    nothing. The third connection's changed_elsewhere() and changes_since() follow it all."""
    monkeypatch.setenv(JOURNAL_ENV, journal)
    dims = (4000, 4000)
    db = new_store(tmp_path / DB_NAME, dims)
    reader = ObjectStore.open(db, writer="reader")
    seq0 = reader.last_seq()
    assert not reader.changed_elsewhere()
    writers = {name: Child.python(WRITER_CHILD, {"db": str(db), "writer": name, "other": other,
                                          "seed": seed, "n": 40, "dims": dims})
               for name, other, seed in (("A", "B", 1000), ("B", "A", 2000))}
    try:
        for child in writers.values():
            child.wait_for("ready")
        for child in writers.values():
            child.send("go")
        for child in writers.values():
            child.wait_for("added")
        ids = {name: [int(x.split()[1]) for x in c.lines if x.startswith("id ")]
               for name, c in writers.items()}
        a, b = ids["A"], ids["B"]
        assert len(a) == len(b) == 40
        assert len(set(a) | set(b)) == 80
        assert max(a) > min(b) and max(b) > min(a), "the writers did not interleave"

        assert reader.changed_elsewhere() is True
        assert reader.changed_elsewhere() is False  # once per change
        changes = reader.changes_since(seq0)
        assert len(changes) == 80 and {c.op for c in changes} == {"create"}
        assert sorted(c.object_id for c in changes if c.writer == "A") == sorted(a)
        assert sorted(c.object_id for c in changes if c.writer == "B") == sorted(b)
        assert sorted(reader.ids()) == sorted(a + b) and reader.count() == 80
        for name, seed in (("A", 1000), ("B", 2000)):
            for i, object_id in enumerate(ids[name]):
                obj = reader.get(object_id)
                assert obj.class_name == name and obj.version == 1
                assert same_geometry(obj.geometry, nucleus(seed + i, dims))

        # Each undo takes back that writer's own last object only.
        seq1 = reader.last_seq()
        assert reply(writers["A"], "undo") == {"undone": [a[-1]]}
        assert reader.changed_elsewhere() is True
        (change,) = reader.changes_since(seq1)
        assert (change.op, change.object_id, change.writer, change.after_deleted) == (
            "undo", a[-1], "A", True)
        assert reader.get(a[-1]).deleted and reader.count() == 79
        assert set(b) <= set(reader.ids())
        assert reply(writers["B"], "undo") == {"undone": [b[-1]]}
        assert reader.get(b[-1]).deleted and reader.count() == 78
        assert set(a[:-1]) | set(b[:-1]) == set(reader.ids())

        # B refines A's (now) last object: A's undo of it is refused, nothing changes.
        assert reply(writers["B"], f"refine {a[-2]} 9999") == {"version": 2}
        refused = reply(writers["A"], "undo")
        assert refused["error"] == "StoreError", refused
        assert "\n" not in refused["message"] and str(a[-2]) in refused["message"]
        obj = reader.get(a[-2])
        assert not obj.deleted and obj.version == 2 and obj.model == "B"
        assert same_geometry(obj.geometry, nucleus(9999, dims))
        # B undoes its refine; then A's undo goes through again.
        assert reply(writers["B"], "undo") == {"undone": [a[-2]]}
        assert reader.get(a[-2]).version == 1
        assert reply(writers["A"], "undo") == {"undone": [a[-2]]}
        assert reader.get(a[-2]).deleted and reader.count() == 77
        for child in writers.values():
            child.send("quit")
            child.finish()
    finally:
        for child in writers.values():
            child.kill()
        reader.close()
    check_tables(db)
    ObjectStore.open(db).close()


# ----------------------------------------------------------------------------- 3. mid-render
RENDER_DIMS = (8000, 8000)
RENDER_LAYOUT = {"shape": (RENDER_DIMS[1], RENDER_DIMS[0]), "downsamples": [1.0, 4.0, 16.0],
                 "chunk": 1024}
CLASSES = ("tumor", "nucleus", "lymphocyte")

RENDER_CHILD = """
from napari_wsi_sam.store.rendering import ObjectRasters
store = ObjectStore.open(Path(ARGS["db"]))
rasters = ObjectRasters(store, **ARGS["layout"])
print("drawing", flush=True)
if ARGS["mode"] == "draw":  # a first open: every layer drawn from nothing
    for name in store.classes():
        rasters.levels(name)
elif ARGS["mode"] == "rebuild":
    rasters.rebuild()
elif ARGS["mode"] == "change":  # a big change, committed, then one sync
    rng = random.Random(ARGS["seed"])
    dims = ARGS["dims"]
    tumor = store.ids(classes=["tumor"])
    store.delete([tumor[0]])
    store.refine(tumor[1], region(ARGS["seed"], dims, dims[0] / 6))
    nuclei = store.ids(classes=["nucleus"])
    store.reclass(rng.sample(nuclei, 150), "lymphocyte")
    store.delete(rng.sample(store.ids(classes=["lymphocyte"]), 100))
    store.add_many([NewObject(nucleus(ARGS["seed"] + k, dims), "nucleus")
                    for k in range(400)])
    print("changed", flush=True)
    rasters.sync()
print("done", flush=True)
"""


def render_store(folder: Path, *, n_nuclei: int, dims=RENDER_DIMS, seed: int = 5) -> Path:
    """Three large regions (one of them about a quarter of the slide) and nuclei over the
    whole slide, inside and outside the regions, of two classes."""
    folder.mkdir(parents=True)
    db = new_store(folder / DB_NAME, dims)
    with ObjectStore.open(db) as store:
        store.add_many([NewObject(region(seed + k, dims, dims[0] * f), "tumor")
                        for k, f in enumerate((0.25, 0.12, 0.08))])
        items = [NewObject(nucleus(seed * 10_000 + k, dims), CLASSES[1 + k % 2])
                 for k in range(n_nuclei)]
        for start in range(0, len(items), 500):
            store.add_many(items[start:start + 500])
    return db


def draw_fresh(db: Path, folder: Path, layout=RENDER_LAYOUT) -> tuple[ObjectRasters, float]:
    """Rasters drawn from nothing in `folder`, and how long that took (to time the kills)."""
    store = ObjectStore.open(db, check=False)
    started = time.perf_counter()
    rasters = ObjectRasters(store, folder=folder, **layout)
    for name in store.classes():
        rasters.levels(name)
    return rasters, time.perf_counter() - started


def reopen_and_sync(db: Path, layout=RENDER_LAYOUT) -> ObjectRasters:
    """What a viewer does after a crash: open the store (quick_check) and its rasters, sync."""
    store = ObjectStore.open(db)
    rasters = ObjectRasters(store, **layout)
    rasters.sync()
    assert rasters.sync() == {}, "a second sync found work left"
    assert rasters.synced_seq == store.last_seq()
    assert not list(rasters.folder.rglob("*.partial")), "half-written chunks left"
    return rasters


def assert_same_rasters(got: ObjectRasters, want: ObjectRasters) -> None:
    """Every level of every class layer holds the same labels (compared in stripes)."""
    names = list(want.store.classes())
    assert names == list(got.store.classes())
    for name in names:
        for k, (a, b) in enumerate(zip(got.levels(name), want.levels(name), strict=True)):
            assert a.shape == b.shape and a.dtype == b.dtype
            for y in range(0, a.shape[0], 2048):
                sa, sb = a[y:y + 2048], b[y:y + 2048]
                if not np.array_equal(sa, sb):
                    wrong = np.argwhere(sa != sb)
                    pytest.fail(f"layer {name!r} level {k}: {len(wrong)} px differ from a "
                                f"fresh drawing, first at row {y + wrong[0][0]}, column "
                                f"{wrong[0][1]} ({sa[tuple(wrong[0])]} vs {sb[tuple(wrong[0])]})")


def close(*rasters: ObjectRasters) -> None:
    for r in rasters:
        r.store.close()


def test_kill_mid_render_then_sync_draws_what_a_fresh_render_draws(tmp_path):
    """Rasters killed while first drawn, while rebuilt, and while synced after a big change
    (delete, refine, re-class, delete, add): reopened and synced, every level of every layer
    equals a fresh drawing in another folder. Deleting render/ and reopening draws it again,
    identically."""
    db = render_store(tmp_path / "store", n_nuclei=1500)
    rng = random.Random(33)
    fresh, took = draw_fresh(db, tmp_path / "fresh1")
    args = {"db": str(db), "layout": RENDER_LAYOUT, "dims": RENDER_DIMS, "seed": 77}
    for mode in ("draw", "rebuild"):
        child = Child.python(RENDER_CHILD, {**args, "mode": mode})
        child.wait_for("drawing")
        time.sleep(rng.uniform(0.1, 0.8) * took)
        child.kill()
        synced = reopen_and_sync(db)
        assert_same_rasters(synced, fresh)
        close(synced)
    close(fresh)

    child = Child.python(RENDER_CHILD, {**args, "mode": "change"})
    child.wait_for("changed")
    time.sleep(rng.uniform(0.1, 0.7) * took)
    child.kill()
    fresh, _ = draw_fresh(db, tmp_path / "fresh2")
    with ObjectStore.open(db) as store:  # the change is all there
        assert store.count(deleted=True) == 101 and store.count() == 1503 - 101 + 400
    synced = reopen_and_sync(db)
    assert_same_rasters(synced, fresh)
    close(synced)

    shutil.rmtree(db.parent / RENDER_DIR)
    redrawn = reopen_and_sync(db)
    assert_same_rasters(redrawn, fresh)
    close(redrawn, fresh)


SMALL_DIMS = (3000, 3000)
SMALL_LAYOUT = {"shape": (3000, 3000), "downsamples": [1.0, 4.0], "chunk": 512}
KILL_AT_POINT = """
import zarr
from napari_wsi_sam.store.rendering import ObjectRasters
store = ObjectStore.open(Path(ARGS["db"]))
rasters = ObjectRasters(store, **ARGS["layout"])
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if ARGS["point"] == "old layer deleted":  # rebuild: after `del self.group[key]`
    delete = zarr.Group.__delitem__
    zarr.Group.__delitem__ = lambda self, key: (delete(self, key), die())
else:  # _new_layer: after the layer is saved in the state, before its pending window is
    ObjectStore.ids = lambda self, **kw: die()
rasters.rebuild()
print("not killed", flush=True)
"""


@pytest.mark.parametrize("point", ["old layer deleted", "new layer saved"])
def test_kill_at_named_points_of_rebuild(point, tmp_path):
    """rebuild() killed at its two unprotected points: after deleting a layer's arrays and
    before the state says so, and after a new layer is saved and before its full window is
    recorded as pending. A reopened, synced raster should equal a fresh one."""
    db = render_store(tmp_path / "store", n_nuclei=300, dims=SMALL_DIMS)
    fresh, _ = draw_fresh(db, tmp_path / "fresh", SMALL_LAYOUT)
    first, _ = draw_fresh(db, db.parent / RENDER_DIR, SMALL_LAYOUT)
    close(first)
    child = Child.python(KILL_AT_POINT, {"db": str(db), "layout": SMALL_LAYOUT, "point": point})
    assert child.wait() == -signal.SIGKILL and "not killed" not in child.lines, child.stderr
    synced = reopen_and_sync(db, SMALL_LAYOUT)
    assert_same_rasters(synced, fresh)
    close(synced, fresh)


KILL_WHILE_CREATING = """
from napari_wsi_sam.store import schema
from napari_wsi_sam.store.files import open_store
from napari_wsi_sam.slide import open_slide
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
create_schema = schema.create_schema
if ARGS["point"] == "file made, no tables yet":
    schema.create_schema = lambda conn, meta: die()
else:  # tables and meta made, the file not yet moved into place
    schema.create_schema = lambda conn, meta: (create_schema(conn, meta), die())
with open_slide(ARGS["slide"]) as slide:
    open_store(slide, folder=Path(ARGS["folder"]))
print("not killed", flush=True)
"""


@pytest.mark.parametrize("point", ["file made, no tables yet", "tables made, not moved in"])
def test_kill_while_creating_a_store(point, sample_slide, tmp_path):
    """`open_store` killed while it creates a new store: the next `open_store` of that folder
    gives a complete store of the slide (created afresh, or the one the kill left)."""
    from napari_wsi_sam.slide import open_slide
    from napari_wsi_sam.store.files import open_store

    folder = tmp_path / "labels"
    child = Child.python(KILL_WHILE_CREATING, {"slide": str(sample_slide),
                                               "folder": str(folder), "point": point})
    assert child.wait() == -signal.SIGKILL and "not killed" not in child.lines, child.stderr
    assert not (folder / DB_NAME).exists()  # built beside and moved in: no half store
    with open_slide(sample_slide) as slide:
        with open_store(slide, folder=folder) as store:
            assert store.dimensions == tuple(slide.dimensions), store.meta
            assert store.mpp is not None and store.meta.get("store_id"), store.meta
            store.add(nucleus(1, slide.dimensions), class_name="nucleus")
    assert not list(folder.glob("*.creating*"))


# ----------------------------------------------------------------------------- 4. mid-export
EXPORT_CHILD = """
from napari_wsi_sam.pipeline.objects import export_objects
store = ObjectStore.open(Path(ARGS["db"]))
print("ready", flush=True)
k = 0
while True:
    k += 1
    export_objects(store, Path(ARGS["target"]))
    print(f"exported {k}", flush=True)
"""


def temp_files(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*.part"))


def assert_complete_export(target: Path, ids: list[int]) -> None:
    text = target.read_text(encoding="utf-8")
    data = json.loads(text)  # a truncated file fails here
    assert data["type"] == "FeatureCollection"
    assert [f["properties"]["id"] for f in data["features"]] == ids


def test_kill_mid_export_leaves_the_old_file_or_none_and_next_export_cleans_up(tmp_path):
    """A child exporting a large store over and over, killed while a temp file is being
    written (and once at a random moment): the target is absent or a complete, valid GeoJSON
    of every object, never truncated; the temp file the kill left is removed by the next
    export."""
    dims = (20000, 20000)
    (tmp_path / "store").mkdir()
    db = new_store(tmp_path / "store" / DB_NAME, dims)
    with ObjectStore.open(db) as store:
        store.add_many([NewObject(nucleus(k, dims), "cell") for k in range(4000)])
        ids = store.ids()
    target = tmp_path / "out" / "objects.geojson"
    target.parent.mkdir()
    rng = random.Random(44)
    left_behind: list[Path] = []
    for attempt in range(10):
        child = Child.python(EXPORT_CHILD, {"db": str(db), "target": str(target)})
        child.wait_for("ready")
        if attempt in (0, 2):  # at a random moment, whatever the phase: first while the
            time.sleep(rng.uniform(0.0, 0.4 if attempt == 0 else 1.5))  # first export runs
        else:  # while a temp file is being written, after 0-2 complete exports
            for _ in range(rng.randint(0, 2)):
                child.wait_for("exported")
            before = {p.name for p in temp_files(target)}
            deadline = time.monotonic() + TIMEOUT
            while not {p.name for p in temp_files(target)} - before:
                assert time.monotonic() < deadline and child.proc.poll() is None, child.stderr
                time.sleep(0.0002)
        child.kill()
        if not any(x.startswith("exported") for x in child.lines) and attempt == 0:
            assert not target.exists(), "the first export showed before it was complete"
        if target.exists():
            assert_complete_export(target, ids)
        others = {p.name for p in target.parent.iterdir()} - {target.name}
        assert all(n.startswith(f".{target.name}.") and n.endswith(".part") for n in others)
        left_behind = temp_files(target)
        assert len(left_behind) <= 1, "an export left the temp file of a dead writer"
        if attempt >= 3 and left_behind:
            break
    assert left_behind, "no kill landed while a temp file was being written"
    with ObjectStore.open(db) as store:
        assert export_objects(store, target) == len(ids)
    assert temp_files(target) == [], "the next export left the stale temp file"
    assert_complete_export(target, ids)


def test_stale_temp_files_go_and_live_writers_files_stay(tmp_path):
    """The cleanup of `write_text_atomic`: a temp file of the same target goes when its writer
    (a process of this machine) is gone or it was untouched for 10 minutes; one a live process
    may be writing stays, and so does every other file."""
    target = tmp_path / "objects.geojson"
    host = file_io._HOST
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait(TIMEOUT)
    old = time.time() - file_io.STALE_AFTER_S - 60
    name = target.name
    files = {  # file name -> (old mtime?, should it go?)
        f".{name}.{ended.pid}-{host}.k2j4_x9a.part": (False, True),  # writer gone
        f".{name}.{sleeper.pid}-{host}.abcd1234.part": (False, False),  # writer alive
        f".{name}.{sleeper.pid}-{host}.efgh5678.part": (True, True),  # alive, but untouched
        f".{name}.{os.getpid()}-{host}.mine0000.part": (False, False),  # this process
        f".{name}.{ended.pid}-ffffff.zz9_8y7x.part": (False, False),  # another machine's
        f".{name}.{ended.pid}-eeeeee.zz9_8y7w.part": (True, True),  # ... untouched
        f".{name}.a1b2c3d4.part": (False, False),  # an earlier release's, fresh
        f".{name}.q1w2e3r4.part": (True, True),  # ... untouched
        f".other.geojson.{ended.pid}-{host}.k2j4_x9a.part": (True, False),  # another target
        f".{name}.part": (True, False),  # not one of ours (weights use this form)
        f"{name}.backup": (True, False),
    }
    try:
        for file_name, (is_old, _) in files.items():
            path = tmp_path / file_name
            path.write_text("partial")
            if is_old:
                os.utime(path, (old, old))
        folder = tmp_path / f".{name}.{ended.pid}-{host}.dir00000.part"
        folder.mkdir()  # not a file: left alone
        file_io.write_text_atomic(target, "{}")
        assert target.read_text() == "{}"
        for file_name, (_, goes) in files.items():
            assert (tmp_path / file_name).exists() != goes, file_name
        assert folder.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait(TIMEOUT)
    # Once the live writer is gone too, its fresh temp file goes with the next write.
    file_io.write_text_atomic(target, "{}")
    assert not (tmp_path / f".{name}.{sleeper.pid}-{host}.abcd1234.part").exists()
    assert (tmp_path / f".{name}.{os.getpid()}-{host}.mine0000.part").exists()


# ----------------------------------------------------------------------------- 5. CLI resume
def tissue_prompts(slide_path: Path, n: int = 30, seed: int = 2024) -> list[list[int]]:
    """`n` small boxes (level-0 px) on tissue of the CMU slide, around three crop-grid nodes
    (so they fall into three crop groups)."""
    from napari_wsi_sam.slide import open_slide

    with open_slide(slide_path) as slide:
        w, h = slide.dimensions
        thumb = np.asarray(slide.read_window(2, x0=0, y0=0, x1=w // 4, y1=h // 4))[..., :3]
        step = 512 * 1.0 / slide.mpp[0]  # HR crop 1024 px at 1 µm/px: nodes half a crop apart
    tissue = thumb.mean(axis=2) < 200
    rng = np.random.default_rng(seed)
    nodes = [(1, 1), (1, 2), (2, 2)]
    boxes: list[list[int]] = []
    for _ in range(100 * n):
        if len(boxes) == n:
            break
        gx, gy = nodes[len(boxes) % len(nodes)]
        size = int(rng.integers(40, 90))
        cx, cy = (int(v) for v in np.array([gx, gy]) * step + rng.uniform(-320, 320, 2))
        x0, y0 = cx - size // 2, cy - size // 2
        if not (0 <= x0 and 0 <= y0 and x0 + size < w and y0 + size < h):
            continue
        if tissue[min(cy // 4, tissue.shape[0] - 1), min(cx // 4, tissue.shape[1] - 1)]:
            boxes.append([x0, y0, x0 + size, y0 + size])
    assert len(boxes) == n, "not enough tissue near the nodes"
    return boxes


def write_prompts(path: Path, boxes: list[list[int]]) -> Path:
    features = [{"type": "Feature", "properties": {"objectType": "annotation"},
                 "geometry": {"type": "Polygon", "coordinates": [
                     [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}}
                for x0, y0, x1, y1 in boxes]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def store_rows(db: Path) -> list[tuple]:
    """(id, deleted, version number, resume key, box) of every object, read while a writer may
    be at work (a plain read-only connection)."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT o.id, o.deleted, v.number, o.resume_key, v.prompt FROM "
                            "objects o JOIN versions v ON v.vid = o.current ORDER BY o.id")
        return [(i, d, n, k, tuple(json.loads(p)["box"])) for i, d, n, k, p in rows]
    finally:
        conn.close()


@pytest.mark.slow
def test_killed_cli_batch_resumes_without_duplicates(sample_slide, tmp_path):
    """`napari-wsi-sam segment --prompts` (30 boxes on the CMU slide, several crop groups,
    MobileSAM on the CPU) killed once a few objects are stored, then run again to the end:
    exactly one live object per prompt, those of the killed run kept as they were; --force then
    makes version 2 of each object instead of new ones."""
    from napari_wsi_sam.pipeline import group_by_crop, items_from_geojson
    from napari_wsi_sam.slide import open_slide

    boxes = tissue_prompts(sample_slide)
    prompts = write_prompts(tmp_path / "prompts.geojson", boxes)
    items, _ = items_from_geojson(prompts)
    with open_slide(sample_slide) as slide:
        groups, errors = group_by_crop(slide, items, hr_mpp=1.0)
    assert len(items) == 30 and not errors and len(groups) >= 3
    labels, out = tmp_path / "labels", tmp_path / "out.geojson"
    db = labels / DB_NAME
    argv = [sys.executable, "-m", "napari_wsi_sam.cli", "segment", str(sample_slide),
            "--prompts", str(prompts), "--out", str(out), "--labels", str(labels),
            "--device", "cpu"]

    child = Child(argv)
    deadline = time.monotonic() + 300
    rows: list[tuple] = []
    while len(rows) < 3:
        assert child.proc.poll() is None, f"the run ended before it was killed:\n{child.stderr}"
        assert time.monotonic() < deadline, child.stderr
        time.sleep(0.01)
        if db.is_file():
            try:
                rows = store_rows(db)
            except sqlite3.DatabaseError:  # the store is being created
                rows = []
    child.kill()
    before = store_rows(db)
    assert 3 <= len(before) < 30, f"{len(before)} objects when killed"
    with ObjectStore.open(db) as store:  # quick_check
        kept = {i: store.get(i).geometry for i, *_ in before}

    def run(*extra: str) -> None:
        done = subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    run()
    rows = store_rows(db)
    wanted = sorted(tuple(float(v) for v in b) for b in boxes)
    assert len(rows) == 30, f"{len(rows)} objects for 30 prompts"
    assert sorted(r[4] for r in rows) == wanted, "one object per prompt"
    assert all(r[1] == 0 and r[2] == 1 for r in rows)
    assert len({r[3] for r in rows}) == 30 and None not in {r[3] for r in rows}
    with ObjectStore.open(db) as store:
        for object_id, geometry in kept.items():  # the killed run's objects, untouched
            assert same_geometry(store.get(object_id).geometry, geometry)
    assert len(json.loads(out.read_text())["features"]) == 30

    run("--force")
    again = store_rows(db)
    assert [r[0] for r in again] == [r[0] for r in rows], "--force made new objects"
    assert all(r[1] == 0 and r[2] == 2 for r in again), "--force should make version 2"
    check_tables(db)


# ----------------------------------------------------------------------------- first writers
FIRST_WRITER = """
from napari_wsi_sam.slide import open_slide
from napari_wsi_sam.store.files import open_store
import shapely
with open_slide(ARGS["slide"]) as slide:
    shapes = [nucleus(seed, slide.dimensions) for seed in ARGS["seeds"]]
    while True:  # one round a line: the folder of a store that does not exist yet
        print("ready", flush=True)
        folder = sys.stdin.readline().strip()  # every writer starts at once
        if not folder:
            break
        with open_store(slide, folder=Path(folder)) as store:
            store.add_many([NewObject(g, class_name=ARGS["name"]) for g in shapes])
        print("done", flush=True)
"""


def write_features(path: Path, dims: tuple[int, int], seeds: range) -> Path:
    features = [{"type": "Feature", "properties": {"classification": {"name": "nucleus"}},
                 "geometry": shapely.geometry.mapping(nucleus(seed, dims))} for seed in seeds]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def start_together(children: list[Child], line: str = "go") -> None:
    for child in children:
        child.wait_for("ready")
    for child in children:
        child.send(line)


def test_twenty_rounds_of_three_first_writers_never_break_a_store(sample_slide, tmp_path):
    """Three processes open a slide's store that does not exist yet, at the same moment, and
    each adds its own objects: every round, all three succeed into one complete store. The
    same three processes play every round (each round a new folder), so the rounds cost no
    interpreter starts."""
    children = [Child.python(FIRST_WRITER, {
        "slide": str(sample_slide), "name": f"writer{k}",
        "seeds": list(range(100 * k, 100 * k + 5))}) for k in range(3)]
    try:
        for attempt in range(20):
            folder = tmp_path / f"round-{attempt}"
            start_together(children, str(folder))
            for child in children:
                child.wait_for("done")
            with ObjectStore.open(folder / DB_NAME, check=True) as store:
                counts = {name: 0 for name in ("writer0", "writer1", "writer2")}
                for obj in store.iter_live():
                    counts[obj.class_name] += 1
                assert counts == dict.fromkeys(counts, 5), (attempt, counts)
            assert sorted(p.name for p in folder.iterdir()
                          if not p.name.startswith(DB_NAME + "-")) == [DB_NAME], attempt
        start_together(children, "")
        for child in children:
            child.finish()
    finally:
        for child in children:
            child.kill()


@pytest.mark.parametrize("existing", [False, True])
def test_three_cli_imports_at_once_keep_every_object(existing, sample_slide, tmp_path):
    """``objects import`` three times at once (a new store, or one that holds 10 objects):
    every run exits 0 and the store holds every object of every file."""
    from napari_wsi_sam.slide import open_slide
    from napari_wsi_sam.store.files import open_store

    folder = tmp_path / "labels"
    with open_slide(sample_slide) as slide:
        dims = tuple(slide.dimensions)
        if existing:
            with open_store(slide, folder=folder) as store:
                store.add_many([NewObject(nucleus(s, dims), class_name="before")
                                for s in range(900, 910)])
    files = [write_features(tmp_path / f"part{k}.geojson", dims, range(50 * k, 50 * k + 50))
             for k in range(3)]
    procs = [subprocess.Popen([sys.executable, "-m", "napari_wsi_sam.cli", "objects", "import",
                               str(sample_slide), str(f), "--labels", str(folder)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for f in files]
    for proc in procs:
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0 and "50 objects imported" in out, err
    with ObjectStore.open(folder / DB_NAME, check=True) as store:
        assert store.count() == 150 + 10 * existing
        assert len({o.id for o in store.iter_live()}) == store.count()


# ----------------------------------------------------------------------------- killed CLI runs
def cli(*argv: str, env: dict | None = None) -> list[str]:
    return [sys.executable, "-m", "napari_wsi_sam.cli", *argv]


def tree_state(folder: Path) -> frozenset:
    """Every file under `folder` with its size and modification time: changes when a command
    writes there. A file or folder that vanishes during the walk (a temporary one renamed or
    removed) is a write under way: that gives a state no quiet tree has."""
    if not folder.exists():
        return frozenset()
    try:
        return frozenset((str(p), st.st_size, st.st_mtime_ns) for p in folder.rglob("*")
                         if stat.S_ISREG((st := p.stat()).st_mode))
    except FileNotFoundError:
        return frozenset({("changing",)})


def kill_while_writing(argv: list[str], *, watch: Path, rng: random.Random, env: dict) -> bool:
    """Start `argv` and SIGKILL it at a random moment after it first writes under `watch`:
    1 ms to as long again as it took to get there (most of a CLI run before its first write
    is imports and model loading), log-uniform, so that short writes get hit as often as
    long ones. Returns whether it was killed before it ended."""
    before = tree_state(watch)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    while proc.poll() is None and tree_state(watch) == before:
        assert time.monotonic() - start < TIMEOUT, "the command never wrote"
        time.sleep(0.01)
    first_write = time.monotonic() - start
    low = 0.001  # log-uniform: a 10 ms write is as likely to be hit as a 10 s one
    kill_at = time.monotonic() + math.exp(rng.uniform(math.log(low),
                                                      math.log(max(first_write, low))))
    while proc.poll() is None and time.monotonic() < kill_at:
        time.sleep(0.005)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait(TIMEOUT)
    return killed


def run_then_kill_at_random(argv: list[str], *, watch: Path, tries: int, seed: int, env: dict,
                            after_kill) -> int:
    """`tries` runs of `argv`, each killed at a seeded random moment while it writes under
    `watch` (`kill_while_writing`); `after_kill` checks what each kill left, then the run is
    repeated to the end and checked again. The first kill lands in a first run, on the state
    the test made. Returns how many runs were killed before they ended."""
    rng = random.Random(seed)
    killed = 0
    for _ in range(tries):
        killed += kill_while_writing(argv, watch=watch, rng=rng, env=env)
        after_kill()
        rerun = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=env)
        assert rerun.returncode == 0, rerun.stderr
        after_kill()
    return killed


def test_killed_geojson_import_reruns_to_every_object_once(sample_slide, tmp_path):
    from napari_wsi_sam.slide import open_slide

    with open_slide(sample_slide) as slide:
        dims = tuple(slide.dimensions)
    source = write_features(tmp_path / "nuclei.geojson", dims, range(400))
    folder = tmp_path / "labels"

    def complete_or_absent():
        db = folder / DB_NAME
        if not db.exists():
            return
        with ObjectStore.open(db, check=True) as store:
            live = list(store.iter_live())
        assert len(live) in (0, 400), len(live)  # one transaction: all or nothing
        assert len({o.resume_key for o in live}) == len(live)

    run_then_kill_at_random(cli("objects", "import", str(sample_slide), str(source),
                                "--labels", str(folder)), watch=folder, tries=3, seed=25,
                            env=dict(os.environ), after_kill=complete_or_absent)
    with ObjectStore.open(folder / DB_NAME) as store:
        assert store.count() == 400


def test_killed_export_labels_leaves_the_old_labels_or_none(sample_slide, tmp_path):
    import zarr

    from napari_wsi_sam.slide import open_slide
    from napari_wsi_sam.store.files import open_store

    folder, out = tmp_path / "labels", tmp_path / "classes.zarr"
    with open_slide(sample_slide) as slide, open_store(slide, folder=folder) as store:
        store.add_many([NewObject(nucleus(s, slide.dimensions), class_name="nucleus")
                        for s in range(200)])

    def whole_or_absent():
        target = out / "labels" / "classes"
        if target.exists():
            group = zarr.open_group(str(target), mode="r")
            assert int(np.asarray(group["0"][:]).max()) >= 1  # a complete level 0
        leftovers = [p for p in (out / "labels").glob(".*partial*")] if out.exists() else []
        assert all(p.is_dir() for p in leftovers)  # staging only; never the real name

    run_then_kill_at_random(cli("objects", "export-labels", str(sample_slide), "--labels",
                                str(folder), "--out", str(out)), watch=out, tries=3,
                            seed=7, env=dict(os.environ), after_kill=whole_or_absent)
    assert (out / "labels" / "classes").is_dir()


def test_killed_head_install_leaves_the_head_or_none(tmp_path):
    import torch

    from napari_wsi_sam.model.registry import shipped_heads

    home = tmp_path / "home"
    env = {**os.environ, "NAPARI_WSI_SAM_HOME": str(home)}
    source = shipped_heads()[0].path

    def whole_or_absent():
        for path in (home / "heads").glob("*.pt") if (home / "heads").exists() else []:
            assert path.read_bytes() == source.read_bytes(), path
            torch.load(path, map_location="cpu", weights_only=True)

    run_then_kill_at_random(cli("heads", "install", str(source), "--name", "mine"),
                            watch=home / "heads", tries=3, seed=3, env=env,
                            after_kill=whole_or_absent)
    assert (home / "heads" / "mine.pt").read_bytes() == source.read_bytes()


def test_killed_precompute_leaves_whole_nodes_or_none(sample_slide, tmp_path):
    import zarr

    slide = tmp_path / sample_slide.name
    shutil.copy(sample_slide, slide)

    def whole_nodes_only():
        for marker in tmp_path.rglob("zarr.json"):
            node = marker.parent
            if not node.name[:1].isdigit() or any(p.name.startswith(".")
                                                  for p in node.parents):
                continue  # the folders above the nodes, or a staging copy
            for which in ("hr", "lr"):
                for name in ("embedding", "early"):
                    path = node / f"{which}_{name}"
                    if path.exists():  # an `sam` node holds the HR crop only
                        assert np.isfinite(np.asarray(zarr.open_array(path, mode="r")[:])
                                           ).all()
            assert (node / "hr_embedding").exists(), node

    argv = cli("precompute", str(slide), "--model", "sam", "--workers", "0", "--device", "cpu",
               "--no-progress")
    killed = run_then_kill_at_random(argv, watch=tmp_path, tries=1, seed=11,
                                     env=dict(os.environ), after_kill=whole_nodes_only)
    assert killed == 1, "the run ended before the kill: nothing was tested"


def test_killed_train_leaves_a_whole_head_or_none(tmp_path):
    from napari_wsi_sam.model.head_checkpoint import load_head

    out, features = tmp_path / "run", tmp_path / "features"

    def whole_or_absent():
        if (out / "head.pt").exists():
            load_head(out / "head.pt")
        for cached in features.rglob("*.pt"):
            import torch

            torch.load(cached, map_location="cpu", weights_only=True)

    argv = cli("train", "--data", "builtin:hgsc_nest", "--out", str(out), "--epochs", "1",
               "--views-per-image", "2", "--objects-per-view", "2", "--batch", "2",
               "--device", "cpu", "--features", str(features), "--no-progress")
    killed = run_then_kill_at_random(argv, watch=tmp_path, tries=1, seed=5,
                                     env=dict(os.environ), after_kill=whole_or_absent)
    assert killed == 1, "the run ended before the kill: nothing was tested"
    load_head(out / "head.pt")
