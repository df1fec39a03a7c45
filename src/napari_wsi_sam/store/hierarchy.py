"""The object hierarchy: each live object's parent is the smallest live object that covers it.

"Covers" is exact: every point of the child lies in the parent (shapely's ``covers``), so a
nucleus segmented inside a region is the region's child and one that pokes out of it is not.
Objects are ranked by (area, age): a parent ranks above its child (larger, or as large and
older), so the hierarchy never has a cycle; two copies of one outline nest the newer in the
older. The parent is stored (``objects.parent``) and kept up to date inside the transaction of
every change, as QuPath keeps its object hierarchy, so exports and the UI read it directly.
"""

from __future__ import annotations

import sqlite3

import shapely

from ..polygons import Areal
from .schema import unpack_geometry, unpack_many

Rank = tuple[float, int]


def rank(area: float, object_id: int) -> Rank:
    """Larger ranks higher; among equal areas, the older (smaller id) ranks higher."""
    return float(area), -int(object_id)


def _current(conn: sqlite3.Connection, object_id: int) -> Current | None:
    row = conn.execute(
        "SELECT v.geometry, v.area, v.x0, v.y0, v.x1, v.y1 FROM objects o JOIN versions v "
        "ON v.vid = o.current WHERE o.id = ? AND o.deleted = 0", (object_id,)).fetchone()
    if row is None:
        return None
    return unpack_geometry(row[0]), float(row[1]), tuple(row[2:])


Current = tuple[Areal, float, tuple]
"""An object's current geometry, area and bounds (x0, y0, x1, y1)."""


def best_container(conn: sqlite3.Connection, object_id: int, here: Current | None = None
                   ) -> int | None:
    """The smallest-ranked live object that covers `object_id` and ranks above it (`here`:
    its current geometry, area and bounds when the caller has them)."""
    here = here or _current(conn, object_id)
    if here is None:
        return None
    geometry, area, (x0, y0, x1, y1) = here
    rows = conn.execute(
        "SELECT o.id, v.area, v.geometry FROM live_bounds b JOIN objects o ON o.id = b.id "
        "JOIN versions v ON v.vid = o.current WHERE b.x0 <= ? AND b.x1 >= ? AND b.y0 <= ? "
        "AND b.y1 >= ? AND b.id != ?", (x0, x1, y0, y1, object_id)).fetchall()
    mine = rank(area, object_id)
    candidates = sorted((rank(a, i), i, blob) for i, a, blob in rows if rank(a, i) > mine)
    for _, candidate, blob in candidates:  # smallest first: the first that covers wins
        if unpack_geometry(blob).covers(geometry):
            return int(candidate)
    return None


def _set_parent(conn: sqlite3.Connection, object_id: int, parent: int | None) -> None:
    conn.execute("UPDATE objects SET parent = ? WHERE id = ?", (parent, object_id))


def children(conn: sqlite3.Connection, object_id: int) -> list[int]:
    return [int(r[0]) for r in conn.execute(
        "SELECT id FROM objects WHERE parent = ? AND deleted = 0", (object_id,))]


def on_live(conn: sqlite3.Connection, object_id: int, here: Current | None = None) -> None:
    """`object_id` is live with (maybe new) geometry: find its parent, re-check the objects it
    was parent of, and adopt the smaller objects it now covers better than their parent.
    here: its geometry, area and bounds, when the caller has them (a bulk insert)."""
    here = here or _current(conn, object_id)
    _set_parent(conn, object_id, best_container(conn, object_id, here))
    for child in children(conn, object_id):
        _set_parent(conn, child, best_container(conn, child))
    if here is None:  # pragma: no cover - the caller made it live
        return
    geometry, area, (x0, y0, x1, y1) = here
    mine = rank(area, object_id)
    rows = conn.execute(
        "SELECT o.id, v.area, v.geometry, o.parent, pv.area FROM live_bounds b "
        "JOIN objects o ON o.id = b.id JOIN versions v ON v.vid = o.current "
        "LEFT JOIN objects p ON p.id = o.parent LEFT JOIN versions pv ON pv.vid = p.current "
        "WHERE b.x0 >= ? AND b.x1 <= ? AND b.y0 >= ? AND b.y1 <= ? AND b.id != ?",
        (x0, x1, y0, y1, object_id)).fetchall()
    better = [(int(i), blob) for i, a, blob, parent, parent_area in rows
              if rank(a, i) < mine and (parent is None or rank(parent_area, parent) > mine)]
    if not better:
        return
    shapely.prepare(geometry)
    covered = shapely.covers(geometry, unpack_many([blob for _, blob in better]))
    conn.executemany("UPDATE objects SET parent = ? WHERE id = ?",
                     [(object_id, i) for (i, _), hit in zip(better, covered, strict=True) if hit])


def on_gone(conn: sqlite3.Connection, object_id: int) -> None:
    """`object_id` is no longer live: its children find their next container."""
    kids = children(conn, object_id)
    _set_parent(conn, object_id, None)
    for child in kids:
        _set_parent(conn, child, best_container(conn, child))
