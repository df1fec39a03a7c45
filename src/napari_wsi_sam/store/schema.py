"""The object store's SQLite file: schema, connections, journal mode, geometry encoding, errors.

One file per slide, ``objects.sqlite``. Tables (see docs/objects.md):

- ``objects``: one row per object: its current version, whether it is deleted, its parent
  (the smallest live object that covers it), its resume key, when it was created, and its
  UUID (stable through every version, and through a round trip with QuPath, which writes it
  as the GeoJSON Feature's ``id``; schema version 2, `upgrade` adds it to older stores);
- ``versions``: every version of every object (append-only): geometry (level-0 px, WKB,
  zlib), class, model, head, score, prompt, bounds and area;
- ``live_bounds``: an R*Tree over the bounds of live objects, for viewport and click queries;
- ``changes``: every change, in order: which object went from which version to which, by which
  writer, in which group (undo and redo walk it); other viewers read it to refresh;
- ``classes``: class name -> colour; ``meta``: the slide this store belongs to.

WAL mode lets viewers read while one process writes; on a network file system, where WAL's
shared memory does not work, the rollback journal is used instead (`journal_mode_for`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import shapely
from shapely.geometry.base import BaseGeometry

from ..errors import StoreError
from ..polygons import Areal, polygonal

logger = logging.getLogger(__name__)

DB_NAME = "objects.sqlite"
APPLICATION_ID = 0x57534153  # "WSAS"
SCHEMA_VERSION = 2
JOURNAL_ENV = "NAPARI_WSI_SAM_JOURNAL"
"""Force the journal mode: ``wal`` or ``delete`` (default: chosen by the file system)."""
BUSY_TIMEOUT_MS = 30_000
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "smb", "afs", "9p", "ceph", "glusterfs",
    "fuse.glusterfs", "lustre", "gpfs", "fuse.sshfs", "sshfs", "fuse.s3fs", "fuse.rclone",
    "davfs", "fuse.davfs2", "ncpfs", "coda", "fuse.cephfs", "beegfs", "panfs", "orangefs"})

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE classes (name TEXT PRIMARY KEY, color TEXT NOT NULL);
CREATE TABLE objects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    current INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    parent INTEGER,
    resume_key TEXT,
    uuid TEXT NOT NULL
);
CREATE UNIQUE INDEX objects_uuid ON objects (uuid);
CREATE INDEX objects_resume ON objects (resume_key) WHERE resume_key IS NOT NULL;
CREATE INDEX objects_parent ON objects (parent) WHERE parent IS NOT NULL;
CREATE TABLE versions (
    vid INTEGER PRIMARY KEY,
    object_id INTEGER NOT NULL,
    number INTEGER NOT NULL,
    op TEXT NOT NULL,
    time REAL NOT NULL,
    class_name TEXT NOT NULL,
    model TEXT NOT NULL,
    head TEXT,
    score REAL,
    score_kind TEXT,
    prompt TEXT,
    geometry BLOB NOT NULL,
    x0 INTEGER NOT NULL, y0 INTEGER NOT NULL, x1 INTEGER NOT NULL, y1 INTEGER NOT NULL,
    area REAL NOT NULL
);
CREATE INDEX versions_object ON versions (object_id, number);
CREATE VIRTUAL TABLE live_bounds USING rtree (id, x0, x1, y0, y1);
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    object_id INTEGER NOT NULL,
    op TEXT NOT NULL,
    before_vid INTEGER,
    before_deleted INTEGER NOT NULL,
    after_vid INTEGER NOT NULL,
    after_deleted INTEGER NOT NULL,
    writer TEXT NOT NULL,
    group_id TEXT NOT NULL,
    time REAL NOT NULL,
    undo_state INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX changes_writer ON changes (writer, undo_state, seq);
CREATE INDEX changes_group ON changes (group_id, writer, undo_state);
"""

DONE, UNDONE, FINAL = 0, 1, 2
"""``changes.undo_state``: undoable; undone (redoable); neither (undo/redo records, dropped)."""


# -------------------------------------------------------------------------------- geometry
def pack_geometry(geometry: Areal) -> bytes:
    """A (Multi)Polygon in level-0 px as zlib-compressed WKB (pixel-edge outlines shrink ~4x)."""
    return zlib.compress(shapely.to_wkb(geometry), 6)


def unpack_geometry(data: bytes) -> Areal:
    return polygonal(shapely.from_wkb(zlib.decompress(data)))


def unpack_many(blobs: list[bytes]) -> list[Areal]:
    """Many geometries at once (shapely's vectorised WKB reader)."""
    if not blobs:
        return []
    geoms = shapely.from_wkb([zlib.decompress(b) for b in blobs])
    return [polygonal(g) for g in geoms]


def pixel_bounds(geometry: BaseGeometry) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) integer level-0 px covering the geometry (x1/y1 exclusive)."""
    import math

    minx, miny, maxx, maxy = geometry.bounds
    return math.floor(minx), math.floor(miny), math.ceil(maxx), math.ceil(maxy)


# -------------------------------------------------------------------------------- journal
def filesystem_type(path: Path, mounts: str | None = None) -> str | None:
    """The file system type holding `path` (Linux: /proc/mounts; Windows: 'remote' for a
    network drive or UNC path), or None when it cannot be told."""
    resolved = Path(os.path.abspath(path))
    if sys.platform == "win32" or (mounts is None and not Path("/proc/mounts").is_file()):
        return _windows_type(resolved) if sys.platform == "win32" else None
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    best, kind = -1, None
    text = str(resolved)
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = text == point or text.startswith(point.rstrip("/") + "/") or point == "/"
        if inside and len(point) > best:
            best, kind = len(point), fields[2]
    return kind


def _windows_type(path: Path) -> str | None:
    if str(path).startswith("\\\\"):
        return "remote"
    try:
        import ctypes

        drive = f"{path.drive}\\"
        kind = ctypes.windll.kernel32.GetDriveTypeW(drive)  # type: ignore[attr-defined]
        return "remote" if kind == 4 else "local"  # DRIVE_REMOTE
    except (AttributeError, OSError):
        return None


def journal_mode_for(folder: Path, *, mounts: str | None = None) -> str:
    """"wal" on local disks; "delete" (SQLite's rollback journal) on network file systems,
    where WAL's shared-memory index is not safe. ``$NAPARI_WSI_SAM_JOURNAL`` forces either."""
    forced = os.environ.get(JOURNAL_ENV, "").strip().lower()
    if forced in ("wal", "delete"):
        return forced
    kind = filesystem_type(folder, mounts)
    if kind is not None and (kind in NETWORK_FILESYSTEMS or kind == "remote"
                             or (kind.startswith("fuse.") and "sshfs" in kind)):
        logger.info("%s is on a network file system (%s): using SQLite's rollback journal",
                    folder, kind)
        return "delete"
    return "wal"


# -------------------------------------------------------------------------------- connections
def connect(path: Path, *, mode: str, journal: str, query_only: bool = False
            ) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), shared across threads
    under the store's lock. mode: SQLite's "rwc" (create), "rw" or "ro". A read-only view of
    a writable file uses "rw" with `query_only`, so that it can still roll back what a killed
    writer left in a hot journal."""
    uri = f"{path.resolve().as_uri()}?mode={mode}"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if mode != "ro" and not query_only:
            found = conn.execute(f"PRAGMA journal_mode = {journal}").fetchone()[0]
            if found.lower() != journal:
                logger.info("%s: journal mode %s (asked for %s)", path, found, journal)
            conn.execute("PRAGMA synchronous = " + ("NORMAL" if journal == "wal" else "FULL"))
        if mode == "ro" or query_only:
            conn.execute("PRAGMA query_only = 1")
        conn.execute("PRAGMA foreign_keys = OFF")
    except sqlite3.Error as error:
        raise translate(error, path, "open") from error
    return conn


def hot_journal(path: Path) -> bool:
    """True when a writer stopped mid-transaction in rollback mode and left its journal."""
    journal = path.with_name(path.name + "-journal")
    return journal.is_file() and journal.stat().st_size > 0


def connect_immutable(path: Path) -> sqlite3.Connection:
    """A read-only connection that takes no locks (a store on a read-only medium)."""
    uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA query_only = 1")
    except sqlite3.Error as error:
        raise translate(error, path, "open") from error
    return conn


def create_schema(conn: sqlite3.Connection, meta: dict[str, object]) -> None:
    """The tables of a new store and the slide's meta, in one transaction."""
    import json

    with transaction(conn):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                         [(k, json.dumps(v)) for k, v in meta.items()])
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a file that is not an object store, or one from a newer release."""
    app = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app != APPLICATION_ID:
        raise StoreError(f"{path} is an SQLite file but not a napari-wsi-sam object store; "
                         "move it away or choose another labels folder")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer napari-wsi-sam (store version "
                         f"{version}, this one reads {SCHEMA_VERSION}); upgrade napari-wsi-sam")


def quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """SQLite's quick integrity check; a damaged file is reported, never reset."""
    try:
        result = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.DatabaseError as error:
        raise translate(error, path, "check") from error
    if result != "ok":
        raise StoreError(f"{path} is damaged ({result}); it was left untouched: restore it "
                         "from a backup, or move it away to start a new store")


@contextmanager
def transaction(conn: sqlite3.Connection, *, immediate: bool = True) -> Iterator[None]:
    """One atomic change: BEGIN IMMEDIATE (take the write lock now) ... COMMIT, or ROLLBACK."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def translate(error: sqlite3.Error, path: Path, doing: str) -> StoreError:
    """One line for a user, naming the file and what to do."""
    text = " ".join(str(error).split())
    lowered = text.lower()
    if "disk is full" in lowered or "database or disk is full" in lowered:
        return StoreError(f"the disk holding {path} is full: nothing was changed; free some "
                          "space and try again")
    if "readonly" in lowered or "read-only" in lowered:
        return StoreError(f"{path} is read-only: nothing was changed; choose a labels folder "
                          "you can write to")
    if "locked" in lowered or "busy" in lowered:
        return StoreError(f"{path} stayed locked by another program for "
                          f"{BUSY_TIMEOUT_MS // 1000} s while trying to {doing}; try again")
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return StoreError(f"{path} is damaged ({text}); it was left untouched: restore it from "
                          "a backup, or move it away to start a new store")
    if "unable to open" in lowered:
        return StoreError(f"cannot open {path} ({text}); check that the folder exists and that "
                          "you may read it")
    return StoreError(f"{path}: cannot {doing} the object store ({text})")
