"""Slide access: lazy pyramid levels with pixel sizes, and concentric HR/LR crops.

Never imports torch or napari. Coordinates at every boundary are level-0 pixels, (x, y).
"""

from .crop_grid import CropPairCache, grid_nodes, grid_step, snapped_center
from .crops import Crop, CropMap, CropPair, concentric_crops
from .reader import Slide, open_slide

__all__ = ["Crop", "CropMap", "CropPair", "CropPairCache", "Slide", "concentric_crops",
           "grid_nodes", "grid_step", "open_slide", "snapped_center"]
