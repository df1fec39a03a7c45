"""Segmented objects -> the object store -> QuPath GeoJSON, and GeoJSON -> the store.

All geometry is in level-0 slide pixels (x, y), pixel ``i`` covering ``[i, i + 1)``. The store
is the truth: exports read its exact geometry (never a raster), so overlapping and nested
objects all come out, each with its class, model, head, score (and what the score measures),
parent and version.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ..formats import AnnotationObject, ImageRef, read_annotations, write_annotations
from ..polygons import Areal, mask_to_geometry
from ..prompts import Prompt
from ..slide import Slide
from ..store.colors import as_hex, as_rgb, palette_color
from ..store.object_store import NewObject, ObjectStore, StoredObject
from .items import BatchItem, Provenance
from .segment import SegmentedObject

logger = logging.getLogger(__name__)

IMPORTED = "imported"
"""The model name recorded for objects read from a file."""


def image_of(slide: Slide) -> ImageRef:
    """The slide as the image its objects belong to, for the formats that name it (COCO)."""
    width, height = slide.dimensions
    return ImageRef(name=Path(str(slide.path)).name, size=(int(width), int(height)),
                    mpp=slide.mpp)


def record_prompt(obj: SegmentedObject, prompt: Prompt | None = None) -> dict:
    """The prompt an object keeps: box, points, labels (level-0 px) and the HR µm/px used."""
    return {**(prompt or obj.prompt).to_dict(), "hr_mpp": float(obj.crops.hr_mpp)}


@dataclass(frozen=True, eq=False)
class Outline:
    """What the store keeps of a segmented object: its exact outline (level-0 px), score and
    prompt. A few kB, so workers of a cluster send these, never masks or crops."""

    geometry: Areal
    score: float
    score_kind: str
    model: str
    prompt: dict


def outline_of(obj: SegmentedObject) -> Outline:
    """The object's mask traced into its exact outline (`annotations.polygons`)."""
    return Outline(mask_to_geometry(obj.mask, obj.window), obj.score, obj.score_kind,
                   obj.model, record_prompt(obj))


def store_segmented(store: ObjectStore, obj: SegmentedObject | Outline, *, class_name: str,
                    provenance: Provenance | None = None, resume_key: str | None = None,
                    group: str | None = None) -> int:
    """Add `obj` to `store` as a new object (one transaction); returns its id."""
    outline = obj if isinstance(obj, Outline) else outline_of(obj)
    provenance = provenance or Provenance(outline.model)
    return store.add(outline.geometry, class_name=class_name, model=provenance.model,
                     head=provenance.head, score=outline.score, score_kind=outline.score_kind,
                     prompt=outline.prompt, resume_key=resume_key, group=group)


def refine_stored(store: ObjectStore, object_id: int, obj: SegmentedObject | Outline, *,
                  provenance: Provenance | None = None, group: str | None = None) -> int:
    """A new version of object `object_id` with `obj`'s outline; returns the version number."""
    outline = obj if isinstance(obj, Outline) else outline_of(obj)
    provenance = provenance or Provenance(outline.model)
    return store.refine(object_id, outline.geometry, model=provenance.model,
                        head=provenance.head, score=outline.score,
                        score_kind=outline.score_kind, prompt=outline.prompt, group=group)


def ensure_classes(store: ObjectStore, items: Iterable[BatchItem], *, default_class: str,
                   color: tuple[int, int, int] | None = None) -> None:
    """Store the classes a batch will use before it runs: `color` (if given) for
    `default_class`, an item's own colour for its class, else the default palette's."""
    known = store.classes()
    if color is not None:
        store.set_class(default_class, color)
        known[default_class] = as_hex(color)
    for item in items:
        name = item.class_name or default_class
        if name not in known:
            chosen = item.color or palette_color(name, len(known))
            store.set_class(name, chosen)
            known[name] = as_hex(chosen)


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
    if obj.uuid:
        properties["uuid"] = obj.uuid
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


def export_objects(store: ObjectStore, path: Path, *, image: ImageRef | None = None,
                   mpp: tuple[float, float] | None = None, ids: Collection[int] | None = None,
                   classes: Collection[str] | None = None, format: str | None = None) -> int:
    """Write live objects (all by default) to `path` in level-0 pixels, atomically, in the
    format its suffix tells (`formats.registry`; `format` names one). `image` is the slide
    they belong to (COCO names it); `mpp` (x, y) µm/px adds areas in µm² (default: the
    image's, else the store's). Returns the number written."""
    objects = list(store_to_objects(store, ids=ids, classes=classes))
    image = image or ImageRef()
    use_mpp = mpp if mpp is not None else image.mpp if image.mpp is not None else store.mpp
    write_annotations(objects, path, image=replace(image, mpp=use_mpp), name=format)
    return len(objects)


def import_objects(store: ObjectStore, path: Path, *, default_class: str = "imported",
                   group: str | None = None, image: ImageRef | None = None,
                   format: str | None = None) -> tuple[list[int], list[str]]:
    """Store every outline of an annotation file (QuPath GeoJSON, COCO, ASAP XML, GeoParquet,
    an instance label image: `formats.registry`) as one object (holes and parts kept; class
    and colour kept), in one transaction. Returns (new ids, skipped lines).

    Each object carries a resume key (the file's content digest and the outline's place in
    it), so a rerun after a kill, or a second import of the same file, adds only what is not
    live yet: never a duplicate."""
    result = read_annotations(path, image=image, name=format)
    digest = _file_digest(Path(path))
    keys = [None if digest is None else f"import:{digest}:{k}"
            for k in range(len(result.objects))]
    done = store.live_by_resume_key(k for k in keys if k is not None)
    known = store.classes()
    uuids = kept_uuids(store, result.objects)
    items = []
    skipped = list(result.skipped)
    if done:
        skipped.append(f"{len(done)} outlines of {Path(path).name} that are already in the "
                       "store (imported before; kept, not duplicated)")
    for obj, key, uid in zip(result.objects, keys, uuids, strict=True):
        if key in done:
            continue
        name = obj.class_name or default_class
        if name not in known and obj.color is not None:
            store.set_class(name, obj.color)
            known[name] = obj.color  # type: ignore[assignment]
        score = obj.score
        items.append(NewObject(obj.geometry, name, model=obj.model or IMPORTED,
                               score=score, score_kind=obj.properties.get("score_kind")
                               if score is not None else None, resume_key=key, uuid=uid))
    ids = store.add_many(items, group=group, op="import") if items else []
    logger.info("imported %d objects from %s (%d skipped)", len(ids), path, len(skipped))
    return ids, skipped


def kept_uuids(store: ObjectStore, objects: list[AnnotationObject]) -> list[str | None]:
    """The UUID each imported object keeps (its Feature's ``id``, as QuPath writes it), or
    None (a new one) where it has none, it is not a UUID, it repeats, or the store already
    holds an object with it (a second import of the same objects stays two objects)."""
    import uuid

    wanted: list[str | None] = []
    for obj in objects:
        text = obj.properties.get("uuid")
        try:
            wanted.append(str(uuid.UUID(str(text))) if text is not None else None)
        except ValueError:
            wanted.append(None)
    taken = set(store.ids_by_uuid(u for u in wanted if u is not None))
    out: list[str | None] = []
    for uid in wanted:
        if uid is not None and uid in taken:
            logger.info("an imported object's UUID %s is taken in the store; it gets a new one",
                        uid)
            uid = None
        if uid is not None:
            taken.add(uid)
        out.append(uid)
    return out


def _file_digest(path: Path) -> str | None:
    """The first 16 hex digits of the file's SHA-256 (None for a folder: no resume keys)."""
    import hashlib

    if not path.is_file():
        return None
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            sha.update(chunk)
    return sha.hexdigest()[:16]
