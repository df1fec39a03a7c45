"""Shapes layers as batch items and regions: rectangles, polygons and ellipses in level-0
pixels."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Shapes
from shapely import affinity, unary_union
from shapely.geometry import Point, Polygon

from ..errors import PromptError
from ..pipeline.items import BatchItem
from ..polygons import Areal
from ..prompts import Prompt
from .coords import world_to_slide

AREAL_SHAPES = ("rectangle", "polygon", "ellipse")


def shapes_to_items(layer: Shapes, slide_layer: Any, *, with_masks: bool) -> list[BatchItem]:
    """Every shape as a box prompt in level-0 pixels, with its class from a 'class' feature
    and, optionally, its own outline (an ellipse's or polygon's) as a mask prompt."""
    classes = layer.features["class"] if "class" in layer.features else None
    items = []
    for index in range(len(layer.data)):
        xy = _shape_xy(layer, index, slide_layer)
        box = np.concatenate([xy.min(axis=0), xy.max(axis=0)])
        outline = None
        if with_masks and len(xy) >= 3:
            outline = (_ellipse(xy) if layer.shape_type[index] == "ellipse"
                       else Polygon(xy).buffer(0))
        name = str(classes.iloc[index]) if classes is not None else ""
        items.append(BatchItem(prompt=Prompt(box=box), class_name=name or None,
                               geometry=outline, source=f"{layer.name}[{index}]"))
    return items


def region_of(layer: Shapes, slide_layer: Any) -> Areal:
    """The region a shapes layer gives Segment all, in level-0 pixels: its selected shapes
    (their union), else the shape drawn last; rectangles, polygons and ellipses."""
    if len(layer.data) == 0:
        raise PromptError(f"no region: draw a rectangle or polygon in '{layer.name}'")
    indices = sorted(layer.selected_data) or [len(layer.data) - 1]
    parts = []
    for index in indices:
        kind = layer.shape_type[index]
        if kind not in AREAL_SHAPES:
            raise PromptError(f"a {kind} has no inside: a region is a rectangle, polygon or "
                              "ellipse")
        xy = _shape_xy(layer, index, slide_layer)
        parts.append(_ellipse(xy) if kind == "ellipse" else Polygon(xy).buffer(0))
    region = unary_union(parts)
    if region.is_empty or region.area <= 0:
        raise PromptError("the region has no area: draw a rectangle or polygon around the "
                          "objects")
    return region


def _shape_xy(layer: Shapes, index: int, slide_layer: Any) -> np.ndarray:
    """(n, 2) level-0 (x, y) vertices of one shape."""
    vertices = np.asarray(layer.data[index])
    world = vertices[:, -2:] * layer.scale[-2:] + layer.translate[-2:]
    return world_to_slide(world, scale=slide_layer.scale, translate=slide_layer.translate)


def _ellipse(corners_xy: np.ndarray) -> Polygon:
    """The ellipse napari draws inside its (4, 2) bounding-box corners, as a polygon."""
    (x0, y0), (x1, y1) = corners_xy.min(axis=0), corners_xy.max(axis=0)
    circle = Point((x0 + x1) / 2, (y0 + y1) / 2).buffer(1.0, quad_segs=32)
    return affinity.scale(circle, (x1 - x0) / 2, (y1 - y0) / 2)
