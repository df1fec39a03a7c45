"""Shapes layers as batch items: rectangles, polygons and ellipses in level-0 pixels."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Shapes
from shapely import affinity
from shapely.geometry import Point, Polygon

from ..pipeline.items import BatchItem
from ..prompts import Prompt
from .coords import world_to_slide


def shapes_to_items(layer: Shapes, slide_layer: Any, *, with_masks: bool) -> list[BatchItem]:
    """Every shape as a box prompt in level-0 pixels, with its class from a 'class' feature
    and, optionally, its own outline (an ellipse's or polygon's) as a mask prompt."""
    classes = layer.features["class"] if "class" in layer.features else None
    items = []
    for index, vertices in enumerate(layer.data):
        world = np.asarray(vertices)[:, -2:] * layer.scale[-2:] + layer.translate[-2:]
        xy = world_to_slide(world, scale=slide_layer.scale, translate=slide_layer.translate)
        box = np.concatenate([xy.min(axis=0), xy.max(axis=0)])
        outline = None
        if with_masks and len(xy) >= 3:
            outline = (_ellipse(xy) if layer.shape_type[index] == "ellipse"
                       else Polygon(xy).buffer(0))
        name = str(classes.iloc[index]) if classes is not None else ""
        items.append(BatchItem(prompt=Prompt(box=box), class_name=name or None,
                               geometry=outline, source=f"{layer.name}[{index}]"))
    return items


def _ellipse(corners_xy: np.ndarray) -> Polygon:
    """The ellipse napari draws inside its (4, 2) bounding-box corners, as a polygon."""
    (x0, y0), (x1, y1) = corners_xy.min(axis=0), corners_xy.max(axis=0)
    circle = Point((x0 + x1) / 2, (y0 + y1) / 2).buffer(1.0, quad_segs=32)
    return affinity.scale(circle, (x1 - x0) / 2, (y1 - y0) / 2)
