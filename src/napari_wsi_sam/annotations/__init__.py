"""Annotations: the object store (SQLite, the truth), label pyramids drawn from it, masks <->
polygons in level-0 pixels, QuPath-compatible GeoJSON, and readers of public training-data
formats (ASAP XML, COCO, GeoParquet, instance masks). Never imports torch or napari.
"""

from __future__ import annotations

from .asap_xml import read_asap_xml, write_asap_xml
from .coco import read_coco, write_coco
from .geojson import (
    AnnotationObject,
    ImportResult,
    features_to_objects,
    objects_to_feature_collection,
    read_geojson,
    write_geojson,
)
from .geoparquet import read_geoparquet
from .instance_masks import HISTOLYTICS_NUCLEI_CLASSES, instance_mask_objects, read_instance_masks
from .object_store import Change, NewObject, ObjectStore, StoredObject
from .polygons import (
    geometry_to_mask,
    labels_to_geometries,
    mask_to_geometry,
    polygonal,
    rasterize,
)
from .rendering import ObjectRasters
from .store_files import default_folder, open_store

__all__ = [
    "HISTOLYTICS_NUCLEI_CLASSES",
    "AnnotationObject",
    "Change",
    "ImportResult",
    "NewObject",
    "ObjectRasters",
    "ObjectStore",
    "StoredObject",
    "default_folder",
    "features_to_objects",
    "geometry_to_mask",
    "instance_mask_objects",
    "labels_to_geometries",
    "mask_to_geometry",
    "objects_to_feature_collection",
    "open_store",
    "polygonal",
    "rasterize",
    "read_asap_xml",
    "read_coco",
    "read_geojson",
    "read_geoparquet",
    "read_instance_masks",
    "write_asap_xml",
    "write_coco",
    "write_geojson",
]
