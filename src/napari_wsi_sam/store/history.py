"""Undo and redo over the change log: each writer walks back and forth through its own groups.

A group is one user action (a box, a refining click, a re-class, a batch run). Undo takes the
writer's latest group still done and moves each of its objects back to the state before it
(a refine goes back to the previous version, a create hides the object, a delete brings it
back); redo moves them forward again. Both are themselves logged (op "undo"/"redo", never
undone in turn), so other viewers see them. A group whose objects someone else changed since
is refused with one line: undoing it would throw their work away.
"""

from __future__ import annotations

import sqlite3
import time

from ..errors import StoreError
from .changes import log_change, set_state
from .records import CHANGE_COLUMNS, Change, change
from .schema import DONE, FINAL, UNDONE


def undo(conn: sqlite3.Connection, writer: str) -> list[Change]:
    row = conn.execute("SELECT group_id FROM changes WHERE writer = ? AND undo_state = ? "
                       "ORDER BY seq DESC LIMIT 1", (writer, DONE)).fetchone()
    if row is None:
        return []
    return _move(conn, writer, row[0], backwards=True)


def redo(conn: sqlite3.Connection, writer: str) -> list[Change]:
    row = conn.execute("SELECT group_id FROM changes WHERE writer = ? AND undo_state = ? "
                       "ORDER BY seq ASC LIMIT 1", (writer, UNDONE)).fetchone()
    if row is None:
        return []
    return _move(conn, writer, row[0], backwards=False)


def _move(conn: sqlite3.Connection, writer: str, group: str, *, backwards: bool
          ) -> list[Change]:
    state = DONE if backwards else UNDONE
    rows = conn.execute(f"SELECT {CHANGE_COLUMNS} FROM changes WHERE group_id = ? AND "
                        f"writer = ? AND undo_state = ? ORDER BY seq "
                        f"{'DESC' if backwards else 'ASC'}", (group, writer, state)).fetchall()
    changes = [change(r) for r in rows]
    now = time.time()
    moved = []
    for item in changes:
        start: tuple[int, bool] = (item.after_vid, item.after_deleted)
        end: tuple[int, bool] = (item.before_vid or item.after_vid, item.before_deleted)
        if not backwards:
            start, end = end, start
        current = conn.execute("SELECT current, deleted FROM objects WHERE id = ?",
                               (item.object_id,)).fetchone()
        if current is None or (int(current[0]), bool(current[1])) != start:
            verb = "undo" if backwards else "redo"
            raise StoreError(f"cannot {verb}: object {item.object_id} was changed elsewhere "
                             "since (another window or process); nothing was changed")
        set_state(conn, item.object_id, end[0], deleted=end[1])
        log_change(conn, writer, item.object_id, "undo" if backwards else "redo", start,
                   end, group, now, undo_state=FINAL)
        moved.append(item)
    conn.execute("UPDATE changes SET undo_state = ? WHERE group_id = ? AND writer = ? AND "
                 "undo_state = ? AND op NOT IN ('undo', 'redo')",
                 (UNDONE if backwards else DONE, group, writer, state))
    return moved
