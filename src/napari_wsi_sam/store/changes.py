"""The store's state changes, on an open transaction: a new version, an object pointed at a
version (live or deleted, with its index entry and hierarchy kept right), a change logged.

Every write of `ObjectStore` and every undo and redo (`store_history`) goes through these, so
the index, the hierarchy and the change log can never disagree with the objects.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..polygons import Areal
from . import hierarchy as hierarchy
from . import schema as schema
from .colors import FALLBACK, as_hex
from .records import NewObject, valid_class_name


def insert_version(conn: sqlite3.Connection, object_id: int, number: int, op: str,
                   item: NewObject, geometry: Areal, now: float) -> int:
    """A new row of `versions`; its vid."""
    x0, y0, x1, y1 = schema.pixel_bounds(geometry)
    score = None if item.score is None or not math.isfinite(item.score) else item.score
    cursor = conn.execute(
        "INSERT INTO versions (object_id, number, op, time, class_name, model, head, score, "
        "score_kind, prompt, geometry, x0, y0, x1, y1, area) VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (object_id, number, op, now, valid_class_name(item.class_name), str(item.model or ""),
         item.head, score, item.score_kind if score is not None else None,
         None if item.prompt is None else json.dumps(item.prompt),
         schema.pack_geometry(geometry), x0, y0, x1, y1, float(geometry.area)))
    return int(cursor.lastrowid)  # type: ignore[arg-type]


def set_state(conn: sqlite3.Connection, object_id: int, vid: int, *, deleted: bool,
              geometry: Areal | None = None) -> None:
    """Point the object at version `vid` (live or deleted); keep the index and the hierarchy
    right. geometry: that version's, when the caller has it (saves reading it back)."""
    conn.execute("UPDATE objects SET current = ?, deleted = ? WHERE id = ?",
                 (vid, int(deleted), object_id))
    conn.execute("DELETE FROM live_bounds WHERE id = ?", (object_id,))
    if deleted:
        hierarchy.on_gone(conn, object_id)
        return
    conn.execute("INSERT INTO live_bounds (id, x0, x1, y0, y1) SELECT object_id, x0, x1, y0, "
                 "y1 FROM versions WHERE vid = ?", (vid,))
    known = None if geometry is None else (geometry, float(geometry.area),
                                           schema.pixel_bounds(geometry))
    hierarchy.on_live(conn, object_id, known)


def log_change(conn: sqlite3.Connection, writer: str, object_id: int, op: str,
               before: tuple[int | None, bool], after: tuple[int, bool], group: str,
               now: float, *, undo_state: int = schema.DONE) -> None:
    """A row of the change log. A new change (undoable) ends what this writer could redo."""
    if undo_state == schema.DONE:
        conn.execute("UPDATE changes SET undo_state = ? WHERE writer = ? AND undo_state = ?",
                     (schema.FINAL, writer, schema.UNDONE))
    conn.execute(
        "INSERT INTO changes (object_id, op, before_vid, before_deleted, after_vid, "
        "after_deleted, writer, group_id, time, undo_state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
        "?)", (object_id, op, before[0], int(before[1]), after[0], int(after[1]), writer,
               group, now, undo_state))


def live_row(conn: sqlite3.Connection, object_id: int, path: Path) -> dict[str, Any]:
    """The current version of a live object: vid, number, class; one-line errors otherwise."""
    row = conn.execute(
        "SELECT o.current, o.deleted, v.number, v.class_name FROM objects o JOIN versions v "
        "ON v.vid = o.current WHERE o.id = ?", (int(object_id),)).fetchone()
    if row is None:
        raise StoreError(f"no object {object_id} in {path}")
    if row[1]:
        raise StoreError(f"object {object_id} is deleted; undo the deletion first")
    return {"vid": int(row[0]), "number": int(row[2]), "class_name": row[3]}


def ensure_classes(conn: sqlite3.Connection, names: Iterable[str],
                   colors: Mapping[str, object] | None = None) -> None:
    """Classes the objects name, unless already stored: in `colors`' colour, else the
    fallback one."""
    colors = colors or {}
    conn.executemany("INSERT OR IGNORE INTO classes (name, color) VALUES (?, ?)",
                     [(n, as_hex(colors.get(n, FALLBACK))) for n in sorted(names)])
