"""Segmented objects -> the object store -> QuPath GeoJSON, and GeoJSON -> the store.

All geometry is in level-0 slide pixels (x, y), pixel ``i`` covering ``[i, i + 1)``. The store
is the truth: exports read its exact geometry (never a raster), so overlapping and nested
objects all come out, each with its class, model, head, score (and what the score measures),
parent and version.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from pathlib import Path

from ..annotations.colors import as_rgb
from ..annotations.geojson import AnnotationObject, read_geojson, write_geojson
from ..annotations.object_store import NewObject, ObjectStore, StoredObject
from ..annotations.polygons import mask_to_geometry
from ..prompts import Prompt
from .items import Provenance
from .segment import SegmentedObject

logger = logging.getLogger(__name__)

IMPORTED = "imported"
"""The model name recorded for objects read from a file."""


def record_prompt(obj: SegmentedObject, prompt: Prompt | None = None) -> dict:
    """The prompt an object keeps: box, points, labels (level-0 px) and the HR µm/px used."""
    return {**(prompt or obj.prompt).to_dict(), "hr_mpp": float(obj.crops.hr_mpp)}


def store_segmented(store: ObjectStore, obj: SegmentedObject, *, class_name: str,
                    provenance: Provenance | None = None, resume_key: str | None = None,
                    group: str | None = None) -> int:
    """Add `obj` to `store` as a new object (one transaction); returns its id."""
    provenance = provenance or Provenance(obj.model)
    return store.add(mask_to_geometry(obj.mask, obj.window), class_name=class_name,
                     model=provenance.model, head=provenance.head, score=obj.score,
                     score_kind=obj.score_kind, prompt=record_prompt(obj),
                     resume_key=resume_key, group=group)


def refine_stored(store: ObjectStore, object_id: int, obj: SegmentedObject, *,
                  provenance: Provenance | None = None, group: str | None = None) -> int:
    """A new version of object `object_id` with `obj`'s mask; returns the version number."""
    provenance = provenance or Provenance(obj.model)
    return store.refine(object_id, mask_to_geometry(obj.mask, obj.window),
                        model=provenance.model, head=provenance.head, score=obj.score,
                        score_kind=obj.score_kind, prompt=record_prompt(obj), group=group)


def annotation_object(obj: StoredObject, colors: dict[str, str]) -> AnnotationObject:
    """A stored object as an annotation object (QuPath GeoJSON's shape)."""
    properties: dict[str, object] = {"model": obj.model, "version": obj.version}
    if obj.head:
        properties["head"] = obj.head
    if obj.score is not None:
        properties["score"] = obj.score
        properties["score_kind"] = obj.score_kind
    if obj.parent is not None:
        properties["parent"] = obj.parent
    return AnnotationObject(id=obj.id, geometry=obj.geometry, class_name=obj.class_name,
                            color=as_rgb(colors.get(obj.class_name)), properties=properties)


def store_to_objects(store: ObjectStore, *, ids: Collection[int] | None = None,
                     classes: Collection[str] | None = None) -> Iterator[AnnotationObject]:
    """Live objects of the store (all, those in `ids`, or of `classes`), by id."""
    colors = store.classes()
    if ids is not None:
        for object_id in sorted(set(ids)):
            obj = store.get(object_id)
            if not obj.deleted and (classes is None or obj.class_name in classes):
                yield annotation_object(obj, colors)
        return
    for obj in store.iter_live(classes=None if classes is None else list(classes)):
        yield annotation_object(obj, colors)


def export_geojson(store: ObjectStore, path: Path, *, mpp: tuple[float, float] | None = None,
                   ids: Collection[int] | None = None,
                   classes: Collection[str] | None = None) -> int:
    """Write live objects (all by default) to `path` as QuPath GeoJSON in level-0 pixels,
    atomically; `mpp` (x, y) µm/px adds areas in µm² (default: the store's). Returns the
    number written."""
    count = 0

    def counted() -> Iterator[AnnotationObject]:
        nonlocal count
        for obj in store_to_objects(store, ids=ids, classes=classes):
            count += 1
            yield obj

    write_geojson(counted(), path, mpp=mpp if mpp is not None else store.mpp)
    return count


def import_geojson(store: ObjectStore, path: Path, *, default_class: str = "imported",
                   group: str | None = None) -> tuple[list[int], list[str]]:
    """Store every Polygon/MultiPolygon of a GeoJSON file as one object (holes and parts
    kept; class and colour kept), in one transaction. Returns (new ids, skipped lines)."""
    result = read_geojson(path)
    known = store.classes()
    items = []
    for obj in result.objects:
        name = obj.class_name or default_class
        if name not in known and obj.color is not None:
            store.set_class(name, obj.color)
            known[name] = obj.color  # type: ignore[assignment]
        score = obj.score
        items.append(NewObject(obj.geometry, name, model=obj.model or IMPORTED,
                               score=score, score_kind=obj.properties.get("score_kind")
                               if score is not None else None))
    ids = store.add_many(items, group=group, op="import") if items else []
    logger.info("imported %d objects from %s (%d skipped)", len(ids), path, len(result.skipped))
    return ids, list(result.skipped)
