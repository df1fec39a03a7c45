"""`ObjectStore`: a slide's annotated objects in SQLite: the truth that rasters are drawn from.

Every object is a row with exact geometry (the pixel-edge polygons the pipeline traces, holes
and parts kept, level-0 px), class, model and head, score, prompt and parent. Objects may
overlap and nest freely. Every change (create, refine, re-class, delete) is a version in one
transaction: undo and redo walk versions, a delete stays recoverable until `purge`, and two
processes or viewers on one store never lose or duplicate an object (SQLite's locking; ids
are never reused). Each store instance is one *writer*: its undo and redo touch only its own
changes, and it refuses to undo a change that someone else has changed since.

Coordinates: level-0 slide pixels, (x, y); bounds ``(x0, y0, x1, y1)`` ints, x1/y1 exclusive.
Layout of the file: `store_schema`. Hierarchy: `store_hierarchy`. Undo/redo: `store_history`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import Point, box

from ..errors import StoreError
from ..polygons import Areal, as_areal, polygonal
from ..windows import Window
from . import changes as changes
from . import hierarchy as hierarchy
from . import history as history
from . import schema as schema
from . import upgrade as upgrade
from .colors import as_hex
from .records import (
    CHANGE_COLUMNS,
    VERSION_COLUMNS,
    Change,
    NewObject,
    StoredObject,
    change,
    class_filter,
    stored,
    stored_many,
    valid_class_name,
)

logger = logging.getLogger(__name__)


def new_uuid() -> str:
    """A new object's UUID, written as QuPath writes its objects' ids."""
    return str(uuid.uuid4())

QUICK_CHECK_BYTES = 64 * 2**20
"""Stores smaller than this are checked at every open (about 0.1 s per 100,000 objects)."""

def _remove_stale_builds(path: Path) -> None:
    """Half-made stores (``<name>.creating-<pid>-...``) of processes that no longer run."""
    for leftover in path.parent.glob(f"{path.name}.creating*"):
        pid = leftover.name[len(path.name) + len(".creating-"):].split("-")[0]
        if pid.isdigit() and _running(int(pid)):
            continue
        leftover.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    if pid == os.getpid() or sys.platform == "win32":  # os.kill would end it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, AttributeError):
        return True  # someone else's process, or no way to tell: leave its file alone
    return True


class ObjectStore:
    """The objects of one slide in ``<folder>/objects.sqlite``; make one with `create`,
    `open` or `for_slide` (`store_files`), close it with `close` (or ``with``)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, *, read_only: bool,
                 journal: str, writer: str | None = None) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.journal = journal
        self.writer = writer or uuid.uuid4().hex[:16]
        self._conn = conn
        self._lock = threading.RLock()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.meta: dict[str, Any] = {k: json.loads(v) for k, v in meta.items()}
        self._seen_data_version = self.data_version()

    # ----------------------------------------------------------------- making and closing
    @classmethod
    def create(cls, path: Path, *, meta: dict[str, Any], writer: str | None = None,
               exist_ok: bool = False) -> ObjectStore:
        """A new, empty store at `path` (the file must not exist). meta: the slide it belongs
        to (``slide_path``, ``dimensions`` (w, h), ``mpp``, ``downsamples``).

        The store is built whole beside `path` and moved into place, so a kill at any moment
        leaves either no store or a complete one; writers that start at once all end up in
        the one store that was linked first. exist_ok: open a store that is already there
        (made by another process since the caller looked) instead of refusing."""
        path = Path(path)
        if path.exists():
            if exist_ok:
                return cls.open(path, writer=writer)
            raise StoreError(f"{path} already exists; open it instead")
        _remove_stale_builds(path)
        # A name of this process's own: concurrent first writers never touch each other's
        # half-made file (nor its journal), and only a whole store is ever linked into place.
        tmp = path.with_name(f"{path.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        conn = schema.connect(tmp, mode="rwc", journal="delete")
        try:
            schema.create_schema(conn, meta)
        except sqlite3.Error as error:
            raise schema.translate(error, path, "create") from error
        finally:
            conn.close()
        try:
            try:
                os.link(tmp, path)  # atomic; fails when another process made the store first
            except FileExistsError:
                logger.info("%s was created by another process meanwhile; opening it", path)
            except OSError:  # no hard links here (some shares): rename, never over a store
                if not path.exists():
                    os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return cls.open(path, writer=writer, check=False)

    @classmethod
    def open(cls, path: Path, *, writer: str | None = None, read_only: bool = False,
             check: bool | None = None) -> ObjectStore:
        """Open an existing store; read-only when asked, or when the file or its folder cannot
        be written (then `read_only` is True and every change raises a one-line StoreError).
        check: run SQLite's quick integrity check (a damaged file is reported, never reset);
        by default when the file is under `QUICK_CHECK_BYTES` or was not closed cleanly (a
        WAL or a journal is beside it). Damage found later, while reading, is reported the
        same way; ``napari-wsi-sam objects check`` runs the full check."""
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"{path} does not exist")
        if check is None:
            left = any(path.with_name(path.name + s).is_file() for s in ("-wal", "-journal"))
            check = left or path.stat().st_size < QUICK_CHECK_BYTES
        writable = _writable(path)
        journal = schema.journal_mode_for(path.parent)
        if writable:
            conn = _connect_checked(path, mode="rw", journal=journal, query_only=read_only)
        elif schema.hot_journal(path):
            raise StoreError(f"{path} holds a change that a stopped writer left unfinished, "
                             "and only a writer may roll it back; open it once from a place "
                             "where its folder can be written")
        else:
            try:
                conn = _connect_checked(path, mode="ro", journal=journal)
            except StoreError:
                # A read-only medium: WAL's shared memory cannot be made there, so read the
                # file as it is, taking no locks.
                conn = _connect_checked(path, mode="ro", journal=journal, immutable=True)
        read_only = read_only or not writable
        try:
            if check:
                schema.quick_check(conn, path)
            if read_only:
                upgrade.view_without_upgrade(conn)
            else:
                upgrade.upgrade(conn, path)
            store = cls(path, conn, read_only=read_only, journal=journal, writer=writer)
        except (StoreError, sqlite3.Error) as error:
            conn.close()
            if isinstance(error, sqlite3.Error):
                raise schema.translate(error, path, "read") from error
            raise
        if read_only and not writable:
            logger.warning("%s is read-only: objects can be viewed and exported, not changed",
                           path)
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def dimensions(self) -> tuple[int, int] | None:
        dims = self.meta.get("dimensions")
        return None if dims is None else (int(dims[0]), int(dims[1]))

    @property
    def mpp(self) -> tuple[float, float] | None:
        mpp = self.meta.get("mpp")
        return None if mpp is None else (float(mpp[0]), float(mpp[1]))

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else self.journal
        return f"ObjectStore({str(self.path)!r}, {self.count()} objects, {mode})"

    # ----------------------------------------------------------------- classes
    def classes(self) -> dict[str, str]:
        """Class name -> '#rrggbb', in the order they were first stored."""
        with self._lock:
            return dict(self._conn.execute("SELECT name, color FROM classes ORDER BY rowid"))

    def set_class(self, name: str, color: object) -> None:
        """Add a class or change its colour (every object of the class follows)."""
        name = valid_class_name(name)
        with self._write() as conn:
            conn.execute("INSERT INTO classes (name, color) VALUES (?, ?) ON CONFLICT (name) "
                         "DO UPDATE SET color = excluded.color", (name, as_hex(color)))

    # ----------------------------------------------------------------- reading
    def count(self, *, deleted: bool = False) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM objects WHERE deleted = ?",
                                          (int(deleted),)).fetchone()[0])

    def get(self, object_id: int, *, version: int | None = None) -> StoredObject:
        """An object (deleted ones too), at its current version or at `version`."""
        where, args = ("v.vid = o.current", ()) if version is None else (
            "v.object_id = o.id AND v.number = ?", (int(version),))
        with self._lock:
            row = self._conn.execute(
                f"SELECT {VERSION_COLUMNS} FROM objects o JOIN versions v ON {where} "
                "WHERE o.id = ?", (*args, int(object_id))).fetchone()
        if row is None:
            what = "" if version is None else f" version {version}"
            raise StoreError(f"no object {object_id}{what} in {self.path}")
        return stored(row)

    def versions(self, object_id: int) -> list[StoredObject]:
        """Every version of an object, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {VERSION_COLUMNS} FROM versions v JOIN objects o ON o.id = v.object_id "
                "WHERE v.object_id = ? ORDER BY v.number", (int(object_id),)).fetchall()
        if not rows:
            raise StoreError(f"no object {object_id} in {self.path}")
        return [stored(r) for r in rows]

    def ids(self, *, classes: Sequence[str] | None = None) -> list[int]:
        """Live object ids in creation order (of `classes` only, when given)."""
        sql, args = class_filter("SELECT o.id FROM objects o JOIN versions v ON v.vid = "
                                  "o.current WHERE o.deleted = 0", classes)
        with self._lock:
            return [int(r[0]) for r in self._conn.execute(sql + " ORDER BY o.id", args)]

    def query(self, window: Window, *, classes: Sequence[str] | None = None
              ) -> list[StoredObject]:
        """Live objects whose bounds meet `window` (level-0 px), oldest change first (the
        order they are drawn in: the newest on top)."""
        x0, y0, x1, y1 = window
        sql, args = class_filter(
            f"SELECT {VERSION_COLUMNS} FROM live_bounds b JOIN objects o ON o.id = b.id "
            "JOIN versions v ON v.vid = o.current WHERE b.x0 < ? AND b.x1 > ? AND b.y0 < ? "
            "AND b.y1 > ?", classes, (x1, x0, y1, y0))
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY v.vid", args).fetchall()
        return stored_many(rows)

    def shapes(self, window: Window, *, class_name: str
               ) -> tuple[np.ndarray, np.ndarray, list[Areal]]:
        """What a raster of one class draws in `window`: live object ids (n,), their bounds
        (n, 4) and geometries, in drawing order (the latest change on top)."""
        x0, y0, x1, y1 = window
        with self._lock:
            rows = self._conn.execute(
                "SELECT o.id, v.x0, v.y0, v.x1, v.y1, v.geometry FROM live_bounds b "
                "JOIN objects o ON o.id = b.id JOIN versions v ON v.vid = o.current "
                "WHERE b.x0 < ? AND b.x1 > ? AND b.y0 < ? AND b.y1 > ? AND v.class_name = ? "
                "ORDER BY v.vid", (x1, x0, y1, y0, class_name)).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        bounds = np.array([r[1:5] for r in rows], dtype=np.int64).reshape(-1, 4)
        return ids, bounds, schema.unpack_many([r[5] for r in rows])

    def iter_live(self, *, classes: Sequence[str] | None = None, batch: int = 5000
                  ) -> Iterator[StoredObject]:
        """Every live object by id, read `batch` at a time (exports of 10^5 objects)."""
        last = 0
        while True:
            sql, args = class_filter(
                f"SELECT {VERSION_COLUMNS} FROM objects o JOIN versions v ON v.vid = "
                "o.current WHERE o.deleted = 0 AND o.id > ?", classes, (last,))
            with self._lock:
                rows = self._conn.execute(sql + f" ORDER BY o.id LIMIT {int(batch)}",
                                          args).fetchall()
            if not rows:
                return
            yield from stored_many(rows)
            last = int(rows[-1][1])

    def at_point(self, x: float, y: float) -> list[StoredObject]:
        """Live objects covering the level-0 point (x, y), smallest first (click selection)."""
        hits = [o for o in self.query((math.floor(x), math.floor(y), math.floor(x) + 1,
                                       math.floor(y) + 1))
                if o.geometry.covers(Point(x, y))]
        return sorted(hits, key=lambda o: hierarchy.rank(o.area, o.id))

    def live_classes(self) -> set[str]:
        """The classes that have at least one live object."""
        with self._lock:
            return {r[0] for r in self._conn.execute(
                "SELECT DISTINCT v.class_name FROM objects o JOIN versions v ON v.vid = "
                "o.current WHERE o.deleted = 0")}

    def live_by_resume_key(self, keys: Iterable[str]) -> dict[str, int]:
        """Resume key -> live object id, for the keys that have one (reruns skip them)."""
        wanted = list(dict.fromkeys(keys))
        out: dict[str, int] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):
                part = wanted[start:start + 500]
                marks = ",".join("?" * len(part))
                out.update((k, int(i)) for k, i in self._conn.execute(
                    f"SELECT resume_key, id FROM objects WHERE deleted = 0 AND resume_key IN "
                    f"({marks})", part))
        return out

    def ids_by_uuid(self, uuids: Iterable[str]) -> dict[str, int]:
        """uuid -> id of the objects (live or deleted) that carry one of `uuids`."""
        wanted = list(dict.fromkeys(str(u) for u in uuids))
        found: dict[str, int] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):
                part = wanted[start:start + 500]
                found.update((u, int(i)) for u, i in self._conn.execute(
                    f"SELECT uuid, id FROM objects WHERE uuid IN ({','.join('?' * len(part))})",
                    part))
        return found

    def version_info(self, vids: Iterable[int]) -> dict[int, tuple[str, Window]]:
        """vid -> (class, bounds) of versions (what a raster must redraw when they change)."""
        wanted = sorted({int(v) for v in vids})
        out: dict[int, tuple[str, Window]] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):
                part = wanted[start:start + 500]
                marks = ",".join("?" * len(part))
                for vid, name, x0, y0, x1, y1 in self._conn.execute(
                        f"SELECT vid, class_name, x0, y0, x1, y1 FROM versions WHERE vid IN "
                        f"({marks})", part):
                    out[int(vid)] = (name, (x0, y0, x1, y1))
        return out

    def integrity_check(self) -> None:
        """SQLite's full integrity check (slower than the quick one at open); one line when
        the file is damaged."""
        with self._lock:
            result = [r[0] for r in self._conn.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            raise StoreError(f"{self.path} is damaged: {'; '.join(result[:3])}; it was left "
                             "untouched")

    # ----------------------------------------------------------------- watching
    def last_seq(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT max(seq) FROM changes").fetchone()
        return int(row[0] or 0)

    def changes_since(self, seq: int) -> list[Change]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {CHANGE_COLUMNS} FROM changes WHERE seq > ? ORDER BY seq",
                (int(seq),)).fetchall()
        return [change(r) for r in rows]

    def data_version(self) -> int:
        """SQLite's data version: it changes when another connection commits a change."""
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def changed_elsewhere(self) -> bool:
        """True once after another process or viewer changed the store (a cheap poll)."""
        now = self.data_version()
        changed, self._seen_data_version = now != self._seen_data_version, now
        return changed

    # ----------------------------------------------------------------- writing
    @staticmethod
    def new_group() -> str:
        """An id for changes that undo together (a batch run)."""
        return uuid.uuid4().hex[:16]

    def add(self, geometry: Areal, *, class_name: str, model: str = "",
            head: str | None = None, score: float | None = None,
            score_kind: str | None = None, prompt: dict[str, Any] | None = None,
            resume_key: str | None = None, group: str | None = None, op: str = "create"
            ) -> int:
        """Store a new object (one transaction); returns its id, never used before."""
        return self.add_many([NewObject(geometry, class_name, model, head, score, score_kind,
                                        prompt, resume_key)], group=group, op=op)[0]

    def add_many(self, objects: Iterable[NewObject], *, group: str | None = None,
                 op: str = "import") -> list[int]:
        """Store many new objects in one transaction (all or none); their ids in order."""
        items = [self._checked(o) for o in objects]
        group = group or self.new_group()
        ids = []
        with self._write() as conn:
            now = time.time()
            for item, geometry in items:
                cursor = conn.execute(
                    "INSERT INTO objects (id, current, deleted, created, resume_key, uuid) "
                    "VALUES (?, 0, 0, ?, ?, ?)", (item.id, item.created or now,
                                                  item.resume_key, item.uuid or new_uuid()))
                object_id = int(cursor.lastrowid)  # type: ignore[arg-type]
                vid = changes.insert_version(conn, object_id, 1, op, item, geometry, now)
                changes.set_state(conn, object_id, vid, deleted=False, geometry=geometry)
                changes.log_change(conn, self.writer, object_id, op, (None, True),
                                   (vid, False), group, now)
                ids.append(object_id)
            changes.ensure_classes(conn, {item.class_name for item, _ in items})
        return ids

    def refine(self, object_id: int, geometry: Areal, *, model: str = "",
               head: str | None = None, score: float | None = None,
               score_kind: str | None = None, prompt: dict[str, Any] | None = None,
               group: str | None = None) -> int:
        """A new version of a live object with new geometry (same class); its version number."""
        with self._write() as conn:
            current = changes.live_row(conn, object_id, self.path)
            item, geom = self._checked(NewObject(geometry, current["class_name"], model, head,
                                                 score, score_kind, prompt))
            number = current["number"] + 1
            now = time.time()
            vid = changes.insert_version(conn, object_id, number, "refine", item, geom, now)
            changes.set_state(conn, object_id, vid, deleted=False, geometry=geom)
            changes.log_change(conn, self.writer, object_id, "refine", (current["vid"], False),
                               (vid, False), group or self.new_group(), now)
        return number

    def reclass(self, object_ids: Iterable[int], class_name: str, *,
                group: str | None = None, color: object | None = None) -> None:
        """Give objects another class: a new version each (geometry kept), in one transaction.
        A class new to the store is added in that transaction, in `color` if given."""
        name = valid_class_name(class_name)
        group = group or self.new_group()
        with self._write() as conn:
            now = time.time()
            for object_id in dict.fromkeys(int(i) for i in object_ids):
                row = changes.live_row(conn, object_id, self.path)
                if row["class_name"] == name:
                    continue
                cursor = conn.execute(
                    "INSERT INTO versions (object_id, number, op, time, class_name, model, "
                    "head, score, score_kind, prompt, geometry, x0, y0, x1, y1, area) SELECT "
                    "object_id, number + 1, 'reclass', ?, ?, model, head, score, score_kind, "
                    "prompt, geometry, x0, y0, x1, y1, area FROM versions WHERE vid = ?",
                    (now, name, row["vid"]))
                vid = int(cursor.lastrowid)  # type: ignore[arg-type]
                conn.execute("UPDATE objects SET current = ? WHERE id = ?", (vid, object_id))
                changes.log_change(conn, self.writer, object_id, "reclass", (row["vid"], False),
                                   (vid, False), group, now)
            changes.ensure_classes(conn, {name}, {name: color} if color is not None else None)

    def delete(self, object_ids: Iterable[int], *, group: str | None = None) -> int:
        """Delete live objects (recoverable with undo until `purge`); how many were deleted."""
        group = group or self.new_group()
        done = 0
        with self._write() as conn:
            now = time.time()
            for object_id in dict.fromkeys(int(i) for i in object_ids):
                row = changes.live_row(conn, object_id, self.path)
                changes.set_state(conn, object_id, row["vid"], deleted=True)
                changes.log_change(conn, self.writer, object_id, "delete", (row["vid"], False),
                                   (row["vid"], True), group, now)
                done += 1
        return done

    def undo(self) -> list[Change]:
        """Undo this writer's latest group of changes; [] when there is none."""
        with self._write() as conn:
            return history.undo(conn, self.writer)

    def redo(self) -> list[Change]:
        """Redo the group this writer undid last; [] when there is none."""
        with self._write() as conn:
            return history.redo(conn, self.writer)

    def purge(self) -> int:
        """Remove deleted objects and all their versions for good; how many were removed."""
        with self._write() as conn:
            ids = [int(r[0]) for r in conn.execute("SELECT id FROM objects WHERE deleted = 1")]
            for start in range(0, len(ids), 500):
                part = ids[start:start + 500]
                marks = ",".join("?" * len(part))
                for table, column in (("versions", "object_id"), ("changes", "object_id"),
                                      ("objects", "id")):
                    conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", part)
        if ids:
            with self._lock:
                self._conn.execute("VACUUM")
        return len(ids)

    # ----------------------------------------------------------------- internals
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise StoreError(f"{self.path} is open read-only: nothing was changed; choose a "
                             "labels folder you can write to")
        with self._lock:
            try:
                with schema.transaction(self._conn):
                    yield self._conn
            except sqlite3.Error as error:
                raise schema.translate(error, self.path, "change") from error
            self._seen_data_version = self.data_version()

    def _checked(self, item: NewObject) -> tuple[NewObject, Areal]:
        geometry, why = as_areal(item.geometry)
        if geometry is None:
            raise StoreError(f"cannot store an object without an area ({why})")
        dims = self.dimensions
        if dims is not None and not box(0, 0, *dims).covers(geometry):
            geometry = polygonal(shapely.intersection(geometry, box(0, 0, *dims)))
            if geometry.is_empty:
                raise StoreError(f"the object at {tuple(round(v) for v in item.geometry.bounds)}"
                                 f" lies off the slide ({dims[0]}x{dims[1]} px)")
        try:
            json.dumps(item.prompt, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise StoreError(f"the object's prompt cannot be stored ({error})") from error
        return item, geometry

def _connect_checked(path: Path, *, mode: str, journal: str, query_only: bool = False,
                     immutable: bool = False) -> sqlite3.Connection:
    """A connection to a file that is an object store this release can read."""
    conn = (schema.connect_immutable(path) if immutable
            else schema.connect(path, mode=mode, journal=journal, query_only=query_only))
    try:
        schema.check_schema(conn, path)
    except StoreError:
        conn.close()
        raise
    except sqlite3.Error as error:
        conn.close()
        raise schema.translate(error, path, "open") from error
    return conn


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
