"""Concentric HR/LR crop pairs around annotated objects, with the objects' masks in both crops.

A `CropView` is one training crop pair: where it is centred (an object's centre moved by a
random jitter), and the augmentation applied to both crops together (flips, a transpose,
which with the flips gives all eight quarter-turn rotations and mirrors, colour jitter).
Because SAM is frozen, each view is encoded once and its encoder outputs are cached
(`feature_cache`); the augmentations are therefore drawn per view, when views are planned,
and every object inside a view trains on the same augmented pixels. Objects are rasterised
into each crop through its `CropMap` (and the flips and transpose), so masks and pixels
agree exactly.
No torch here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import shapely.affinity
from skimage.color import hsv2rgb, rgb2hsv

from ..formats import AnnotationObject
from ..polygons import Areal, geometry_to_mask
from ..prompts import Prompt
from ..scale import CROP_SIZE as CROP
from ..slide import Slide, concentric_crops
from ..slide.cropmap import CropMap
from ..slide.crops import crop_map
from ..windows import WindowMask


@dataclass(frozen=True)
class ColorJitter:
    """Factors applied to HR and LR alike: brightness, contrast, saturation (x), hue (+turns)."""

    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0

    @classmethod
    def draw(cls, rng: np.random.Generator, strength: float) -> ColorJitter:
        if strength <= 0:
            return cls()
        u = rng.uniform(-strength, strength, 4)
        return cls(1 + u[0], 1 + u[1], 1 + u[2], round(float(u[3]) * 0.1, 6))

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> the jittered image, uint8."""
        if self == ColorJitter():
            return image
        x = image.astype(np.float32) / 255.0
        x = x * self.brightness
        grey = x.mean()
        x = (x - grey) * self.contrast + grey
        x = np.clip(x, 0, 1)
        if self.saturation != 1.0 or self.hue != 0.0:
            hsv = rgb2hsv(x)
            hsv[..., 0] = (hsv[..., 0] + self.hue) % 1.0
            hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation, 0, 1)
            x = hsv2rgb(hsv)
        return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


@dataclass(frozen=True)
class CropView:
    """One training crop pair: image `image_index` of the data, centred on level-0 `center`."""

    image_index: int
    center: tuple[float, float]
    hr_mpp: float
    lr_factor: float
    flip_x: bool = False
    flip_y: bool = False
    color: ColorJitter = ColorJitter()
    transpose: bool = False
    """Rows and columns swapped after the flips (x <-> y)."""

    def token(self, image_id: str) -> str:
        """A stable text naming this view of the image `image_id` (the feature-cache key)."""
        fields = asdict(self)
        fields.pop("image_index")
        if not self.transpose:
            fields.pop("transpose")  # views without one keep the keys they always had
        fields["center"] = [round(c, 3) for c in self.center]
        text = json.dumps({"image": image_id, **fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class ViewObject:
    """An object inside a view: its masks on the HR and the LR crop grid (after flips)."""

    object_id: int
    class_name: str
    hr: WindowMask
    lr: WindowMask


def plan_views(objects_per_image: list[list[AnnotationObject]], slides: list[Slide], *,
               views_per_image: int, hr_mpp: float, lr_factor: float, seed: int,
               jitter: float = 0.25, flips: bool = True, color: float = 0.1) -> list[CropView]:
    """`views_per_image` crop pairs per image, each centred on a random object's centre moved
    by up to ±`jitter` of the HR field, with random flips and colour jitter (seeded)."""
    views = []
    for index, (objects, slide) in enumerate(zip(objects_per_image, slides, strict=True)):
        if not objects:
            continue
        rng = np.random.default_rng([seed, index])
        mpp = slide.require_mpp()
        field = (CROP * hr_mpp / mpp[0], CROP * hr_mpp / mpp[1])
        centres = np.array([o.geometry.centroid.coords[0] for o in objects])
        width, height = slide.dimensions
        for _ in range(views_per_image):
            cx, cy = centres[rng.integers(len(centres))]
            dx, dy = rng.uniform(-jitter, jitter, 2) * field
            cx, cy = min(max(cx + dx, 0.0), width - 0.5), min(max(cy + dy, 0.0), height - 0.5)
            flip_x, flip_y = (bool(v) for v in rng.integers(0, 2, 2)) if flips else (False, False)
            views.append(CropView(index, (round(float(cx), 3), round(float(cy), 3)),
                                  hr_mpp, lr_factor, flip_x, flip_y,
                                  ColorJitter.draw(rng, color)))
    return views


def view_maps(view: CropView, slide: Slide) -> tuple[CropMap, CropMap]:
    """The HR and LR crop maps of `view` (before flips)."""
    return (crop_map(slide, view.center, mpp=view.hr_mpp),
            crop_map(slide, view.center, mpp=view.hr_mpp * view.lr_factor))


def view_objects(view: CropView, slide: Slide, objects: list[AnnotationObject], *,
                 min_area: int = 16, margin: int = 8) -> list[ViewObject]:
    """Objects lying wholly inside the view's HR crop (`margin` HR px from its edges) and on
    the slide, with at least `min_area` HR pixels, rasterised into both crops."""
    hr_map, lr_map = view_maps(view, slide)
    width, height = slide.dimensions
    lo, hi = margin, CROP - margin
    out = []
    for obj in objects:
        minx, miny, maxx, maxy = obj.geometry.bounds
        if minx < 0 or miny < 0 or maxx > width or maxy > height:
            continue
        (bx0, by0), (bx1, by1) = hr_map.to_crop(np.array([[minx, miny], [maxx, maxy]]))
        if bx0 < lo or by0 < lo or bx1 > hi or by1 > hi:
            continue
        hr = rasterise(obj.geometry, hr_map, flip_x=view.flip_x, flip_y=view.flip_y,
                       transpose=view.transpose)
        if hr is None or hr.area < min_area:
            continue
        lr = rasterise(obj.geometry, lr_map, flip_x=view.flip_x, flip_y=view.flip_y,
                       transpose=view.transpose)
        if lr is None:
            continue
        out.append(ViewObject(obj.id, obj.class_name or "unclassified", hr, lr))
    return out


def rasterise(geometry: Areal, cmap: CropMap, *, flip_x: bool = False,
              flip_y: bool = False, transpose: bool = False) -> WindowMask | None:
    """A level-0 polygon on a crop's pixel grid (pixel centres inside), flipped and then
    transposed as asked; None when no pixel is set."""
    geom = shapely.affinity.affine_transform(
        geometry, crop_transform(cmap, flip_x=flip_x, flip_y=flip_y, transpose=transpose))
    if geom.is_empty:
        return None
    mask, window = geometry_to_mask(geom)
    if not mask.any():
        return None
    return WindowMask(mask, (window[0], window[1]))


def crop_transform(cmap: CropMap, *, size: int = CROP, flip_x: bool = False,
                   flip_y: bool = False, transpose: bool = False) -> list[float]:
    """shapely's affine matrix from level-0 px onto a crop's pixel grid drawn `size` px a
    side (the crop's own 1024, or coarser), flipped and then transposed (x <-> y) as asked."""
    sx, sy = cmap.scale
    ox, oy = cmap.origin
    factor = size / CROP
    a, e = factor / sx, factor / sy
    xoff, yoff = -ox * a, -oy * e
    if flip_x:
        a, xoff = -a, size - xoff
    if flip_y:
        e, yoff = -e, size - yoff
    if transpose:
        return [0.0, e, a, 0.0, yoff, xoff]
    return [a, 0.0, 0.0, e, xoff, yoff]


def render_view(view: CropView, slide: Slide) -> tuple[np.ndarray, np.ndarray]:
    """The view's HR and LR crops (1024, 1024, 3) uint8, flipped, transposed and
    colour-jittered alike."""
    pair = concentric_crops(slide, Prompt.from_points([view.center]), hr_mpp=view.hr_mpp,
                            lr_factor=view.lr_factor, center=view.center, margin=0.0)
    images = []
    for crop in (pair.hr, pair.lr):
        image = crop.image
        if view.flip_x:
            image = image[:, ::-1]
        if view.flip_y:
            image = image[::-1]
        if view.transpose:
            image = image.transpose(1, 0, 2)
        images.append(np.ascontiguousarray(view.color.apply(image)))
    return images[0], images[1]
