"""The object store's records: what a caller gets back (`StoredObject`, `Change`) and hands in
(`NewObject`), and how rows of the SQLite file become them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import StoreError
from ..polygons import Areal
from ..windows import Window
from . import schema as schema

VERSION_COLUMNS = ("v.vid, v.object_id, v.number, v.op, v.time, v.class_name, v.model, v.head, "
                   "v.score, v.score_kind, v.prompt, v.geometry, v.x0, v.y0, v.x1, v.y1, "
                   "v.area, o.created, o.parent, o.resume_key, o.deleted, o.current, o.uuid")
CHANGE_COLUMNS = ("seq, object_id, op, before_vid, before_deleted, after_vid, after_deleted, "
                  "writer, group_id")


@dataclass(frozen=True, eq=False)
class StoredObject:
    """One object as stored (its current version, unless asked for another).

    geometry: Polygon or MultiPolygon, level-0 px. bounds: integer px covering it.
    score_kind: what `score` measures ("predicted_iou", "stability"; `model.registry`).
    prompt: the prompt that made this version (box, points, labels), or None.
    uuid: the object's stable UUID (the same for every version; GeoJSON's Feature ``id``).
    """

    id: int
    version: int
    geometry: Areal
    class_name: str
    model: str
    head: str | None
    score: float | None
    score_kind: str | None
    prompt: dict[str, Any] | None
    bounds: Window
    area: float
    created: float
    edited: float
    parent: int | None
    resume_key: str | None
    deleted: bool
    op: str = "create"
    is_current: bool = True
    uuid: str | None = None


@dataclass(frozen=True)
class NewObject:
    """An object to add (`ObjectStore.add_many`). id and created keep those of an object
    brought from elsewhere (a migrated store); by default a new id and now. uuid keeps an
    object's identity from elsewhere (a QuPath Feature's ``id``); by default a new uuid4."""

    geometry: Areal
    class_name: str
    model: str = ""
    head: str | None = None
    score: float | None = None
    score_kind: str | None = None
    prompt: dict[str, Any] | None = None
    resume_key: str | None = None
    id: int | None = None
    created: float | None = None
    uuid: str | None = None


@dataclass(frozen=True)
class Change:
    """One row of the change log: `object_id` went from (before_vid, before_deleted) to
    (after_vid, after_deleted). before_vid is None when the object was created."""

    seq: int
    object_id: int
    op: str
    before_vid: int | None
    before_deleted: bool
    after_vid: int
    after_deleted: bool
    writer: str
    group: str


def change(row: Sequence[Any]) -> Change:
    """A `changes` row (`CHANGE_COLUMNS`) as a `Change`."""
    return Change(row[0], row[1], row[2], row[3], bool(row[4]), row[5], bool(row[6]), row[7],
                  row[8])


def valid_class_name(name: object) -> str:
    text = str(name).strip()
    if not text:
        raise StoreError("a class needs a name")
    return text


def class_filter(sql: str, classes: Sequence[str] | None, args: tuple = ()
                  ) -> tuple[str, tuple]:
    if classes is None:
        return sql, args
    names = list(classes)
    if not names:
        return sql + " AND 0", args
    return sql + f" AND v.class_name IN ({','.join('?' * len(names))})", (*args, *names)


def stored(row: Sequence[Any], geometry: Areal | None = None) -> StoredObject:
    (vid, object_id, number, op, edited, class_name, model, head, score, score_kind, prompt,
     blob, x0, y0, x1, y1, area, created, parent, resume_key, deleted, current, uid) = row
    return StoredObject(
        id=int(object_id), version=int(number),
        geometry=geometry if geometry is not None else schema.unpack_geometry(blob),
        class_name=class_name, model=model, head=head, score=score, score_kind=score_kind,
        prompt=None if prompt is None else json.loads(prompt), bounds=(x0, y0, x1, y1),
        area=float(area), created=float(created), edited=float(edited),
        parent=None if parent is None else int(parent), resume_key=resume_key,
        deleted=bool(deleted), op=op, is_current=int(vid) == int(current), uuid=uid)


def stored_many(rows: list[Sequence[Any]]) -> list[StoredObject]:
    geometries = schema.unpack_many([r[11] for r in rows])
    return [stored(r, g) for r, g in zip(rows, geometries, strict=True)]
