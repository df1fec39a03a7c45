"""Annotations: masks <-> polygons in level-0 pixels, QuPath-compatible GeoJSON, and the
persistent slide-sized label pyramid. Never imports torch or napari.
"""

from __future__ import annotations

from .geojson import (
    AnnotationObject,
    ImportResult,
    features_to_objects,
    objects_to_feature_collection,
    read_geojson,
    write_geojson,
)
from .labels import LabelObject, LabelStore, default_folder
from .polygons import geometry_to_mask, labels_to_geometries, mask_to_geometry, polygonal

__all__ = [
    "AnnotationObject",
    "ImportResult",
    "LabelObject",
    "LabelStore",
    "default_folder",
    "features_to_objects",
    "geometry_to_mask",
    "labels_to_geometries",
    "mask_to_geometry",
    "objects_to_feature_collection",
    "polygonal",
    "read_geojson",
    "write_geojson",
]
