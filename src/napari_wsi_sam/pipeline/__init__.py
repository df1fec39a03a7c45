"""The whole flow, prompt -> crops -> predictor -> mask in level-0 pixels, without Qt."""

from .crop_grid import CropPairCache, snapped_center
from .segment import SegmentedObject, segment_prompt

__all__ = ["CropPairCache", "SegmentedObject", "segment_prompt", "snapped_center"]

from .batch import BatchItem, BatchProgress, CropGroup, group_by_crop, refine_batch
from .objects import export_geojson, prompts_from_geojson, store_segmented, store_to_objects

__all__ += ["BatchItem", "BatchProgress", "CropGroup", "export_geojson", "group_by_crop",
            "prompts_from_geojson", "refine_batch", "store_segmented", "store_to_objects"]
