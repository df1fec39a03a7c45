"""Where a request's pixels come from: the slide itself (WSI-SAM's 5x context), or the sent
image alone.

QuPath sends only the viewer region, rendered at the viewer's downsample. When a request names
its ``slide`` and the ``region`` it shows (level-0 px), `Place` maps the sent image's pixels
onto the slide, and the pipeline cuts the HR and LR crops from the slide at the head's scale.
Otherwise the sent image becomes a one-level in-memory slide (`sent_image_slide`) and SAM
runs on it; `Place.why_not` says why, and every answer repeats it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
from shapely import affinity

from ..errors import ServeError, SlideError, StoreError, WsiSamError, one_line
from ..polygons import Areal
from ..prompts import Prompt
from ..slide import Slide, open_slide
from ..store.files import open_store
from ..store.object_store import ObjectStore

logger = logging.getLogger(__name__)

SENT_IMAGE_MPP = 1.0
"""The nominal µm/px given to a sent image whose real pixel size is unknown: with the HR crop
at the same µm/px, SAM sees the sent image at its own resolution."""


def decode_image(b64: str, *, max_pixels: int) -> np.ndarray:
    """A base64 PNG/JPEG/TIFF (what QuPath's ImageIO writes) -> (H, W, 3) uint8, its size
    checked from the header before the pixels are decoded. One-line ServeError otherwise."""
    from PIL import Image, UnidentifiedImageError

    if not b64:
        raise ServeError("b64img is empty: send the viewer image as a base64-encoded PNG")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ServeError(f"b64img is not valid base64 ({one_line(error, 80)})") from error
    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
            if width < 1 or height < 1 or width * height > max_pixels:
                raise ServeError(f"the sent image is {width}x{height} px; the limit is "
                                 f"{max_pixels:,} pixels (zoom in, or raise --max-image-mp)")
            pixels = np.asarray(image.convert("RGB"))
    except ServeError:
        raise
    except UnidentifiedImageError as error:
        raise ServeError("b64img is not an image Pillow can read: send a base64-encoded PNG "
                         "or JPEG") from error
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ServeError(f"b64img is a damaged image ({one_line(error, 80)})") from error
    return np.ascontiguousarray(pixels, dtype=np.uint8)


def sent_image_slide(pixels: np.ndarray) -> Slide:
    """The sent image as a one-level slide of nominal pixel size `SENT_IMAGE_MPP`. Its path
    names the pixels' digest, so the predictor's embedding cache (keyed by slide path) reuses
    an embedding only for the very same image (QuPath resends it for each prompt)."""
    height, width = pixels.shape[:2]
    digest = hashlib.sha1(pixels.tobytes()).hexdigest()[:16]
    level = da.from_array(pixels, chunks=(min(1024, height), min(1024, width), 3))
    return Slide(Path(f"sent-image-{digest}.png"), levels=[level], scales=[(1.0, 1.0)],
                 mpp=(SENT_IMAGE_MPP, SENT_IMAGE_MPP), vendor="image", backend="memory")


@dataclass(frozen=True)
class Place:
    """How the sent image (width x height px) lies on `slide`: its pixel (i, j) covers level-0
    [x0 + i*dx, x0 + (i+1)*dx). For the sent image alone, slide is that image, x0 = y0 = 0,
    dx = dy = 1, and why_not says why the slide could not be used."""

    slide: Slide
    x0: float
    y0: float
    dx: float
    dy: float
    size: tuple[int, int]
    store: ObjectStore | None = None
    why_not: str | None = None

    @property
    def on_slide(self) -> bool:
        return self.why_not is None

    @property
    def context(self) -> str:
        if self.on_slide:
            return f"slide {Path(self.slide.path).name}"
        return f"sent image (no 5x context: {self.why_not})"

    def prompt(self, *, bbox: tuple[int, ...] | None,
               points: tuple[tuple[int, int], ...] | None,
               labels: tuple[int, ...] | None) -> Prompt:
        """The request's prompt in level-0 px; boxes and points must lie on the sent image."""
        width, height = self.size
        if labels is not None and points is None:
            raise ServeError("point_labels given without point_coords")
        if points is not None and labels is not None and len(points) != len(labels):
            raise ServeError(f"{len(points)} point_coords but {len(labels)} point_labels; give "
                             "one label (1 foreground, 0 background) per point")
        box = None
        if bbox:
            x0, y0, x1, y1 = bbox
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise ServeError(f"bbox {list(bbox)} is not a box x0<x1, y0<y1 inside the sent "
                                 f"{width}x{height} image")
            box = [self.x0 + x0 * self.dx, self.y0 + y0 * self.dy,
                   self.x0 + x1 * self.dx, self.y0 + y1 * self.dy]
        xy = []
        for x, y in points or ():
            if not (0 <= x < width and 0 <= y < height):
                raise ServeError(f"point ({x}, {y}) lies outside the sent {width}x{height} image")
            xy.append([self.x0 + (x + 0.5) * self.dx, self.y0 + (y + 0.5) * self.dy])
        given = list(labels) if labels is not None else [1] * len(xy)
        if any(v not in (0, 1) for v in given):
            raise ServeError(f"point_labels must be 1 (foreground) or 0 (background), got "
                             f"{given[:8]}")
        try:
            return Prompt(box=None if box is None else np.asarray(box),
                          points=np.asarray(xy, dtype=float).reshape(-1, 2),
                          labels=np.asarray(given, dtype=np.int64))
        except WsiSamError as error:
            raise ServeError(str(error)) from error

    def region(self) -> tuple[float, float, float, float]:
        """The sent image's bounds in level-0 px."""
        width, height = self.size
        return (self.x0, self.y0, self.x0 + width * self.dx, self.y0 + height * self.dy)

    def to_sent(self, geometry: Areal) -> Areal:
        """A level-0 geometry in the sent image's pixels (what QuPath maps back itself)."""
        if self.x0 == 0 and self.y0 == 0 and self.dx == 1 and self.dy == 1:
            return geometry
        return affinity.affine_transform(geometry, [1 / self.dx, 0, 0, 1 / self.dy,
                                                    -self.x0 / self.dx, -self.y0 / self.dy])


class Slides:
    """The slides (and their object stores) that requests name, opened once and kept open
    (the least recently used closed beyond `keep`). Names resolve under `folder`; without
    one, a request may name any slide path this machine can open."""

    def __init__(self, folder: Path | None, *, keep: int = 8) -> None:
        self.folder = None if folder is None else Path(folder).expanduser().resolve()
        self.keep = keep
        self._open: OrderedDict[Path, tuple[Slide, ObjectStore]] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, name: str) -> Path:
        """A request's ``slide`` as a file path, or a one-line ServeError."""
        text = name.strip()
        if not text or "\x00" in text:
            raise ServeError("slide is empty: give the slide's path or its name under --slides")
        path = Path(text).expanduser()
        if self.folder is not None:
            path = (self.folder / path).resolve() if not path.is_absolute() else path.resolve()
            if self.folder not in (path, *path.parents):
                raise ServeError(f"slide {text!r} is not under the server's --slides folder",
                                 status=403)
        if not path.exists():
            where = f" under {self.folder}" if self.folder is not None else ""
            raise ServeError(f"slide {text!r} was not found{where}", status=404)
        return path

    def get(self, name: str) -> tuple[Slide, ObjectStore]:
        """The open slide and its store (made beside the slide, or in the cache)."""
        path = self.resolve(name)
        with self._lock:
            if path in self._open:
                self._open.move_to_end(path)
                return self._open[path]
            slide = open_slide(path)
            try:
                store = open_store(slide)
            except WsiSamError:
                slide.close()
                raise
            if store.read_only:
                store.close()
                slide.close()
                raise StoreError(f"the object store of {path.name} is read-only; objects "
                                 "could not be kept: make its folder writable")
            self._open[path] = (slide, store)
            while len(self._open) > self.keep:
                _, (old_slide, old_store) = self._open.popitem(last=False)
                old_store.close()
                old_slide.close()
            return slide, store

    def place(self, pixels: np.ndarray, *, slide: str | None,
              region: tuple[float, float, float, float] | None) -> Place:
        """Where the sent image lies: on its slide when the request says so and the slide
        opens with a pixel size, else on itself (with the reason)."""
        height, width = pixels.shape[:2]
        why = None
        if slide is None:
            why = "the request names no slide"
        elif region is None:
            why = "the request gives the slide but not the region the image shows"
        if why is None and slide is not None and region is not None:
            x0, y0, x1, y1 = (float(v) for v in region)
            if not (x1 > x0 >= 0 and y1 > y0 >= 0):
                raise ServeError(f"region {list(region)} must be x0 y0 x1 y1 level-0 px with "
                                 "x0 < x1 and y0 < y1")
            try:
                opened, store = self.get(slide)
            except SlideError as error:
                raise ServeError(f"slide {slide!r} cannot be opened: {error}") from error
            if opened.mpp is None:
                why = f"{Path(opened.path).name} records no pixel size"
            else:
                sw, sh = opened.dimensions
                if x1 > sw + 1 or y1 > sh + 1:
                    raise ServeError(f"region {list(region)} lies beyond the slide "
                                     f"({sw}x{sh} px)")
                return Place(opened, x0, y0, (x1 - x0) / width, (y1 - y0) / height,
                             (width, height), store=store)
        return Place(sent_image_slide(pixels), 0.0, 0.0, 1.0, 1.0, (width, height),
                     why_not=why)

    def close(self) -> None:
        with self._lock:
            for slide, store in self._open.values():
                store.close()
                slide.close()
            self._open.clear()
