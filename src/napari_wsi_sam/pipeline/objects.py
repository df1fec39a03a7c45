"""Segmented objects <-> the label store <-> QuPath GeoJSON, for the widget and the CLI.

All geometry is in level-0 slide pixels (x, y), pixel ``i`` covering ``[i, i + 1)``; windows
are ``(x0, y0, x1, y1)`` with x1/y1 exclusive. Areas in GeoJSON are px² and, with a pixel size,
µm².
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from ..annotations.colors import as_rgb
from ..annotations.geojson import AnnotationObject, read_geojson, write_geojson
from ..annotations.labels import LabelStore
from ..annotations.polygons import geometry_to_mask, mask_to_geometry
from ..errors import PromptError
from ..prompts import Prompt
from .segment import SegmentedObject

if TYPE_CHECKING:
    from .batch import BatchItem

logger = logging.getLogger(__name__)

def store_segmented(store: LabelStore, obj: SegmentedObject, *, class_name: str,
                    color: str | tuple, prompt: Prompt) -> int:
    """Add `obj` (its mask over its level-0 window) to `store` with its model, score and
    prompt (``prompt.to_dict()``); returns the new object id. The write is all-or-nothing."""
    return store.add_object(obj.mask, obj.window, class_name=class_name, color=color,
                            model=obj.model, score=obj.score, prompt=prompt.to_dict(),
                            score_kind=obj.score_kind)


def store_to_objects(store: LabelStore, *, ids: Collection[int] | None = None
                     ) -> list[AnnotationObject]:
    """The store's objects (all, or those in `ids`) as annotation objects: geometry traced
    from the pixels still visible at level 0 (`LabelStore.object_masks`), class, colour as
    (r, g, b) 0..255, properties ``model`` and ``score``. An object wholly covered by later
    ones has no pixels left and is left out (logged)."""
    out: list[AnnotationObject] = []
    records = store.objects
    wanted = [i for i in records if ids is None or i in ids]
    for object_id, mask, window in store.object_masks(wanted):
        record = records[object_id]
        if not mask.any():
            logger.info("object %d is wholly covered by later objects; not exported", object_id)
            continue
        properties: dict[str, object] = {"model": record.model}
        if record.score is not None:
            properties["score"] = record.score
            properties["score_kind"] = record.score_kind
        out.append(AnnotationObject(id=object_id, geometry=mask_to_geometry(mask, window),
                                    class_name=record.class_name, color=as_rgb(record.color),
                                    properties=properties))
    return out


def export_geojson(store: LabelStore, path: Path, *, mpp: tuple[float, float] | None,
                   ids: Collection[int] | None = None) -> int:
    """Write the store's objects (all, or those in `ids`) to `path` as QuPath GeoJSON in
    level-0 pixels; `mpp` (x, y) µm/px adds each area in µm² (None: the store's own mpp, if
    it has one). Returns the number of objects written."""
    objects = store_to_objects(store, ids=ids)
    write_geojson(objects, path, mpp=mpp if mpp is not None else store.mpp)
    return len(objects)


def prompts_from_geojson(path: Path) -> tuple[list[BatchItem], list[str]]:
    """Batch items from a QuPath GeoJSON file, and one line per feature skipped.

    Every Polygon / MultiPolygon becomes an item: its bounds as the box prompt, its own
    rasterised mask (level-0 px) for an optional mask prompt, its class and colour. Points,
    lines and the like are skipped (`read_geojson`). Raises AnnotationError for a file that
    is not GeoJSON.
    """
    from .batch import BatchItem

    result = read_geojson(path)
    items: list[BatchItem] = []
    skipped = list(result.skipped)
    for obj in result.objects:
        x0, y0, x1, y1 = obj.geometry.bounds
        source = f"feature id={obj.id}" + (f", class {obj.class_name!r}" if obj.class_name
                                           else "")
        try:
            prompt = Prompt.from_box((x0, y0, x1, y1))
        except PromptError as error:
            skipped.append(f"{source}: {error}")
            continue
        items.append(BatchItem(prompt=prompt, class_name=obj.class_name, color=obj.color,
                               mask=geometry_to_mask(obj.geometry), source=source))
    return items, skipped
