"""Slide access: lazy pyramid levels with pixel sizes, and concentric HR/LR crops.

Never imports torch or napari. Coordinates at every boundary are level-0 pixels, (x, y).
"""

from .crops import Crop, CropMap, CropPair, concentric_crops
from .reader import Slide, open_slide

__all__ = ["Crop", "CropMap", "CropPair", "Slide", "concentric_crops", "open_slide"]
