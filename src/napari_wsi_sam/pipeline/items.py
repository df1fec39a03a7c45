"""What a batch refines: items (a prompt, a class, an optional mask prompt), and where they
come from: annotation objects, a QuPath GeoJSON file, objects already in the store.

One path for the widget and the CLI: `items_from_objects` keeps every Polygon and
MultiPolygon as one item, holes and parts included (its mask is the whole geometry).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import shapely

from ..errors import PromptError
from ..formats.geojson import AnnotationObject, read_geojson
from ..polygons import Areal
from ..prompts import Prompt
from ..scale import DEFAULT_HR_MPP

if TYPE_CHECKING:
    from ..model.registry import ModelChoice
    from ..slide import Slide
    from ..store.object_store import ObjectStore


@dataclass(frozen=True, eq=False)
class BatchItem:
    """One object to refine.

    prompt : box (and points) in level-0 pixels; for a polygon or ellipse, its bounds as box.
    class_name, color : the object's class and (r, g, b) 0..255; None: the batch default.
    geometry : the shape's own outline (Polygon or MultiPolygon, holes kept, level-0 px),
        used as a mask prompt when the batch asks for mask prompts (sampled on the crop's
        mask grid, never rasterised whole).
    source : where the item came from (e.g. "feature 3"), for error lines.
    object_id : an object of the store to refine in place (a new version), or None for a new
        object.
    """

    prompt: Prompt
    class_name: str | None = None
    color: tuple[int, int, int] | None = None
    geometry: Areal | None = None
    source: str = ""
    object_id: int | None = None

    def describe(self, index: int) -> str:
        return f"item {index}" + (f" ({self.source})" if self.source else "")


@dataclass(frozen=True)
class Provenance:
    """What makes an object: the registry's model name, its head (or SAM* decoder), the HR
    µm/px asked for and the mask threshold. Recorded with every object and part of its
    resume key."""

    model: str
    head: str | None = None
    hr_mpp: float = DEFAULT_HR_MPP
    threshold: float = 0.0

    @classmethod
    def of(cls, choice: ModelChoice, *, hr_mpp: float, threshold: float = 0.0) -> Provenance:
        head = choice.head.name if choice.head is not None else (
            choice.decoder.stem if choice.decoder is not None else None)
        return cls(choice.model, head, float(hr_mpp), float(threshold))


def resume_key(slide: Slide, item: BatchItem, provenance: Provenance, *,
               use_mask_prompts: bool) -> str:
    """A key of (slide, prompt, model, head, settings): a rerun skips items whose key is on a
    live object of the store."""
    mask = None
    if use_mask_prompts and item.geometry is not None:
        mask = hashlib.sha1(shapely.to_wkb(shapely.normalize(item.geometry))).hexdigest()
    payload: dict[str, Any] = {
        "slide": [Path(slide.path).name, list(slide.dimensions)],
        "prompt": item.prompt.to_dict(), "class": item.class_name, "mask": mask,
        "model": provenance.model, "head": provenance.head, "hr_mpp": provenance.hr_mpp,
        "threshold": provenance.threshold, "refines": item.object_id}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def item_for_geometry(geometry: Areal, *, class_name: str | None = None,
                      color: tuple[int, int, int] | None = None, source: str = "",
                      object_id: int | None = None) -> BatchItem:
    """A batch item for one outline: its bounds as the box, itself as the mask prompt."""
    x0, y0, x1, y1 = geometry.bounds
    return BatchItem(prompt=Prompt.from_box((x0, y0, x1, y1)), class_name=class_name,
                     color=color, geometry=geometry, source=source, object_id=object_id)


def items_from_objects(objects: Iterable[AnnotationObject]) -> tuple[list[BatchItem], list[str]]:
    """One item per annotation object (holes and parts kept), and one line per object that
    cannot be a prompt."""
    items, skipped = [], []
    for obj in objects:
        source = f"feature id={obj.id}" + (f", class {obj.class_name!r}" if obj.class_name
                                           else "")
        try:
            items.append(item_for_geometry(obj.geometry, class_name=obj.class_name,
                                           color=obj.color, source=source))
        except PromptError as error:
            skipped.append(f"{source}: {error}")
    return items, skipped


def items_from_geojson(path: Path) -> tuple[list[BatchItem], list[str]]:
    """Batch items from a QuPath GeoJSON file, and one line per feature skipped (points,
    lines, empty outlines). Raises AnnotationError for a file that is not GeoJSON."""
    result = read_geojson(path)
    items, skipped = items_from_objects(result.objects)
    return items, [*result.skipped, *skipped]


def items_from_store(store: ObjectStore, ids: Iterable[int]) -> list[BatchItem]:
    """Items that refine objects of the store in place (a new version each)."""
    out = []
    for object_id in ids:
        obj = store.get(object_id)
        out.append(item_for_geometry(obj.geometry, class_name=obj.class_name,
                                     source=f"object {object_id}", object_id=object_id))
    return out
