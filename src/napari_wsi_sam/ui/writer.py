"""napari writer contribution: File > Save Layers of a labels layer to QuPath GeoJSON.

A 'WSI-SAM: <class>' layer is exported from the object store (the exact outlines of every live
object of that class, overlapping ones included); any other labels layer is traced from its
full-resolution array, which must fit in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AnnotationError
from ..formats import AnnotationObject, write_geojson
from ..pipeline.objects import export_objects
from ..polygons import labels_to_geometries
from ..store import ObjectStore
from .layers import CLASS_KEY, STORE_KEY

MAX_TRACED_PIXELS = 200_000_000


def write_labels_geojson(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write `data` (a labels layer's data) to `path` as a GeoJSON FeatureCollection."""
    target = Path(path)
    metadata = meta.get("metadata", {})
    if metadata.get(STORE_KEY):
        with ObjectStore.open(Path(metadata[STORE_KEY]), read_only=True, check=False) as store:
            export_objects(store, target, classes=[metadata[CLASS_KEY]])
        return [str(target)]
    level0 = data[0] if isinstance(data, list) else data
    if int(np.prod(level0.shape)) > MAX_TRACED_PIXELS:
        raise AnnotationError(f"labels layer of shape {tuple(level0.shape)} is too large to "
                              "trace; save a 'WSI-SAM: <class>' layer, which exports its store")
    scale = meta.get("scale", (1.0, 1.0))
    mpp = (float(scale[-1]), float(scale[-2])) if meta.get("units") else None
    objects = [AnnotationObject(id=int(label), geometry=geometry)
               for label, geometry in labels_to_geometries(np.asarray(level0))]
    write_geojson(objects, target, mpp=mpp)
    return [str(target)]
