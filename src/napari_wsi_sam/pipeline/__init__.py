"""The whole flow, prompt -> crops -> predictor -> mask in level-0 pixels -> objects in the
store -> GeoJSON, without Qt."""

from .batch import BatchProgress, CropGroup, group_by_crop, refine_batch
from .items import (
    BatchItem,
    Provenance,
    item_for_geometry,
    items_from_geojson,
    items_from_objects,
    items_from_store,
    resume_key,
)
from .objects import (
    export_objects,
    image_of,
    import_objects,
    refine_stored,
    store_segmented,
    store_to_objects,
)
from .segment import SegmentedObject, segment_prompt

__all__ = ["BatchItem", "BatchProgress", "CropGroup", "Provenance",
           "SegmentedObject", "export_objects", "group_by_crop", "image_of", "import_objects",
           "item_for_geometry", "items_from_geojson", "items_from_objects", "items_from_store",
           "refine_batch", "refine_stored", "resume_key", "segment_prompt",
           "store_segmented", "store_to_objects"]
