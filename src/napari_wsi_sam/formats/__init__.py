"""Files that objects travel in and out of: QuPath GeoJSON, COCO, ASAP XML, GeoParquet,
instance label images and OME-Zarr labels, one module each, looked up by suffix in one
registry (`formats.registry`). Never imports torch or napari."""

from __future__ import annotations

from .asap_xml import read_asap_xml, write_asap_xml
from .coco import read_coco, write_coco
from .format import Format, ImageRef
from .geojson import features_to_objects, objects_to_feature_collection, read_geojson, write_geojson
from .geoparquet import read_geoparquet
from .instance_masks import HISTOLYTICS_NUCLEI_CLASSES, instance_mask_objects, read_instance_masks
from .records import AnnotationObject, ImportResult
from .registry import (
    FORMATS,
    format_for_reading,
    format_for_writing,
    read_annotations,
    write_annotations,
)

__all__ = [
    "FORMATS",
    "HISTOLYTICS_NUCLEI_CLASSES",
    "AnnotationObject",
    "Format",
    "ImageRef",
    "ImportResult",
    "features_to_objects",
    "format_for_reading",
    "format_for_writing",
    "instance_mask_objects",
    "objects_to_feature_collection",
    "read_annotations",
    "read_asap_xml",
    "read_coco",
    "read_geojson",
    "read_geoparquet",
    "read_instance_masks",
    "write_annotations",
    "write_asap_xml",
    "write_coco",
    "write_geojson",
]
