"""The whole flow, prompt -> crops -> predictor -> mask in level-0 pixels, without Qt."""

from .segment import SegmentedObject, segment_prompt

__all__ = ["SegmentedObject", "segment_prompt"]
