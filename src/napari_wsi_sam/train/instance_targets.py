"""What the instance decoder learns per pixel, drawn from annotated objects. No torch.

A view's objects are drawn into a label image on the decoder's output grid (the HR crop at
half resolution, flipped as the view is), and three maps are derived from it
(`model.instance_decoder` explains them): foreground, centre distance and boundary distance,
each object's distances normalised by its own largest so that small and large nuclei weigh
alike. Pixels of the view that lie off the image, or in a held-out block, are marked ignored.
Objects of a rare class can weigh more in the loss (`object_weights`): stroma's thin nuclei
are few in most training images, and recall on them is what Segment all lacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
import shapely.affinity
from scipy import ndimage

from ..formats import AnnotationObject
from ..polygons import Areal, geometry_to_mask
from ..scale import CROP_SIZE
from ..slide import Slide
from .sampler import CropView, crop_transform, view_maps


@dataclass(frozen=True)
class InstanceTargets:
    """(3, H, W) float32 maps [foreground, centre distance, boundary distance], the (H, W)
    bool mask of pixels that count in the loss, and their (H, W) float32 loss weights (0
    where not valid)."""

    maps: np.ndarray
    valid: np.ndarray
    weight: np.ndarray


def view_labels(view: CropView, slide: Slide, objects: Sequence[AnnotationObject], *,
                size: int) -> np.ndarray:
    """(size, size) int32 labels of `objects` on the view's HR crop at `size` px a side
    (flipped and transposed as the view is); 0 is background, object k is k + 1, a later
    object wins where two overlap."""
    hr_map, _ = view_maps(view, slide)
    matrix = crop_transform(hr_map, size=size, flip_x=view.flip_x, flip_y=view.flip_y,
                            transpose=view.transpose)
    field = shapely.box(*hr_map.to_slide(np.array([[0, 0], [CROP_SIZE, CROP_SIZE]])).ravel())
    labels = np.zeros((size, size), np.int32)
    for k, obj in enumerate(objects, start=1):
        if not obj.geometry.intersects(field):
            continue
        drawn = shapely.affinity.affine_transform(obj.geometry, matrix)
        _paint(labels, drawn, k)
    return labels


def _paint(labels: np.ndarray, geometry: Areal, value: int) -> None:
    if geometry.is_empty:
        return
    mask, (x0, y0, x1, y1) = geometry_to_mask(geometry)
    h, w = labels.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 <= cx0 or cy1 <= cy0:
        return
    part = mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    labels[cy0:cy1, cx0:cx1][part] = value


WEIGHT_RING_PX = 2
"""A weighted object's weight reaches this many output px beyond its outline: its boundary
is where the maps decide whether it is found whole."""


def object_weights(labels: np.ndarray, objects: Sequence[AnnotationObject],
                   class_weights: dict[str, float]) -> np.ndarray:
    """(H, W) float32 loss weights of a view's label image (`view_labels`: object k is label
    k + 1): 1 everywhere, and an object's class weight over it and a `WEIGHT_RING_PX` ring
    around it. Where rings meet, the larger weight holds."""
    weight = np.ones(labels.shape, np.float32)
    if not class_weights:
        return weight
    per_label = np.ones(len(objects) + 1, np.float32)
    for k, obj in enumerate(objects, start=1):
        per_label[k] = class_weights.get(obj.class_name or "", 1.0)
    if (per_label == 1.0).all():
        return weight
    on_object = per_label[labels]
    size = 2 * WEIGHT_RING_PX + 1
    return np.maximum(weight, ndimage.maximum_filter(on_object, size=size))


def instance_maps(labels: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 [foreground, centre distance, boundary distance] of a label image.

    Centre distance: each pixel's distance to its object's centroid over the object's largest
    such distance (0 at the centre, 1 at the far rim); boundary distance: 1 - the pixel's
    distance to the object's edge over the object's largest (0 deepest inside, 1 at the
    edge). Background is 0, 1, 1.
    """
    h, w = labels.shape
    foreground = (labels > 0).astype(np.float32)
    centre = np.ones((h, w), np.float32)
    boundary = np.ones((h, w), np.float32)
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        rows, cols = window
        padded = (slice(max(rows.start - 1, 0), rows.stop + 1),
                  slice(max(cols.start - 1, 0), cols.stop + 1))
        inside = labels[padded] == index
        if not inside.any():
            continue
        edge = ndimage.distance_transform_edt(inside)
        ys, xs = np.nonzero(inside)
        cy, cx = ys.mean(), xs.mean()
        to_centre = np.hypot(ys - cy, xs - cx)
        far = max(float(to_centre.max()), 1.0)
        deep = max(float(edge.max()), 1.0)
        c = centre[padded]
        b = boundary[padded]
        c[ys, xs] = to_centre / far
        b[ys, xs] = 1.0 - (edge[ys, xs] - 1.0) / deep
    return np.stack([foreground, centre, np.clip(boundary, 0.0, 1.0)])


def view_valid(view: CropView, slide: Slide, *, size: int,
               ignore: Sequence[Areal] = ()) -> np.ndarray:
    """(size, size) bool: output pixels of the view that lie on the image and outside every
    `ignore` area (held-out blocks, level-0 px)."""
    hr_map, _ = view_maps(view, slide)
    step = CROP_SIZE / size
    centres = (np.arange(size) + 0.5) * step
    if view.flip_x:
        centres_x = CROP_SIZE - centres
    else:
        centres_x = centres
    centres_y = CROP_SIZE - centres if view.flip_y else centres
    gx, gy = np.meshgrid(centres_x, centres_y)
    if view.transpose:  # output pixel (r, c) is the flipped crop's pixel (c, r)
        gx, gy = gx.T, gy.T
    level0 = hr_map.to_slide(np.stack([gx.ravel(), gy.ravel()], axis=1))
    width, height = slide.dimensions
    ok = ((level0[:, 0] >= 0) & (level0[:, 0] < width)
          & (level0[:, 1] >= 0) & (level0[:, 1] < height))
    for area in ignore:
        ok &= ~shapely.contains_xy(area, level0[:, 0], level0[:, 1])
    return ok.reshape(size, size)


def view_targets(view: CropView, slide: Slide, objects: Sequence[AnnotationObject], *,
                 size: int, ignore: Sequence[Areal] = (),
                 class_weights: dict[str, float] | None = None) -> InstanceTargets:
    """The maps, the loss mask and the loss weights of one view."""
    labels = view_labels(view, slide, objects, size=size)
    valid = view_valid(view, slide, size=size, ignore=ignore)
    weight = object_weights(labels, objects, class_weights or {}) * valid
    return InstanceTargets(instance_maps(labels), valid, weight.astype(np.float32))
