"""The whole flow, prompt -> crops -> predictor -> mask in level-0 pixels, without Qt."""

from .crop_grid import CropPairCache, snapped_center
from .segment import SegmentedObject, segment_prompt

__all__ = ["CropPairCache", "SegmentedObject", "segment_prompt", "snapped_center"]
