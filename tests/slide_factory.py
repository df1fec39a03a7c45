"""Test helpers: real H&E tiles and slide files written from them (tiled pyramids, plain images).

The writer itself lives in `napari_wsi_sam.slide.synthetic` so the benchmark shares it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from napari_wsi_sam.assets import fetch
from napari_wsi_sam.slide.synthetic import Layout, he_tiles, write_pyramid

HE_IMAGE = "hgsc_nest.jpg"


@cache
def he_image() -> np.ndarray:
    """The real 1500x1500 H&E image (histolytics' hgsc_nest.jpg), (H, W, 3) uint8."""
    return np.asarray(Image.open(fetch(HE_IMAGE)[HE_IMAGE]).convert("RGB"))


@cache
def real_tiles(tile: int = 256, count: int = 6) -> tuple[np.ndarray, ...]:
    """A few real H&E tiles cut from `he_image`."""
    return tuple(he_tiles(he_image(), tile=tile, count=count, seed=1))


def make_pyramid(path: Path, *, width: int, height: int, layout: Layout = "svs",
                 mpp: float | None = 0.25, tile: int = 256, **kw) -> Path:
    """Write a pyramid of real H&E tiles (see `write_pyramid`)."""
    return write_pyramid(path, list(real_tiles(tile)), width=width, height=height,
                         layout=layout, mpp=mpp, **kw)


def make_image(path: Path, array: np.ndarray) -> Path:
    """Save an array as a plain image (format from the suffix) or TIFF (``.tif``)."""
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)
    return path


def disc_image(*, width: int, height: int, center: tuple[float, float], radius: float,
               supersample: int = 8) -> np.ndarray:
    """(H, W, 3) uint8: a white disc on black, anti-aliased by supersampling (exact area cover).

    Pixel (i, j) covers [i, i+1) x [j, j+1); its value is 255 x the fraction inside the disc.
    """
    s = supersample
    offs = (np.arange(s) + 0.5) / s
    ys = (np.arange(height)[:, None] + offs[None, :]).reshape(-1)
    xs = (np.arange(width)[:, None] + offs[None, :]).reshape(-1)
    inside = ((xs[None, :] - center[0]) ** 2 + (ys[:, None] - center[1]) ** 2) <= radius ** 2
    cover = inside.reshape(height, s, width, s).mean(axis=(1, 3))
    grey = np.rint(cover * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)
