"""GeoJSON export speed: 10,000 real nucleus masks -> polygons -> file -> objects.

Run: ``.venv/bin/python benchmarks/bench_geojson.py [--n 10000] [--baseline-n 500]``

The 1,294 real nuclei of histolytics' hgsc_nest instance mask (1500 x 1500 px) are cut out as
(mask, window) pairs and replicated on a grid of 1500 px tiles across a large virtual slide
until there are ``--n`` objects, each with its own level-0 window. Then:

- mask -> polygon: `mask_to_geometry` on every object (exact pixel-edge tracing);
- write: `write_geojson` of all objects (with mpp, so areas in µm² too);
- read: `read_geojson` of that file;
- rasterise: `geometry_to_mask` of every object read back, checked against the original mask.

Two baselines run in the same process on the first ``--baseline-n`` objects, scaled to ``--n``:

- pixel-square union: every set pixel as a shapely box, merged with `shapely.union_all`
  (exact too, the naive way);
- find_contours: `skimage.measure.find_contours` at level 0.5 on the padded mask, the largest
  contour as the polygon (fast but not exact: it cuts pixel corners and drops holes; its mean
  IoU after rasterising back is reported).

"ratio" is each row's time over our mask -> polygon time for the same number of objects.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import Polygon
from skimage.measure import find_contours

from napari_wsi_sam.assets import fetch
from napari_wsi_sam.formats import AnnotationObject, read_geojson, write_geojson
from napari_wsi_sam.polygons import geometry_to_mask, mask_to_geometry

Item = tuple[np.ndarray, tuple[int, int, int, int]]
TILE = 1500


def real_objects(n: int) -> list[Item]:
    """``n`` (mask, window) pairs: the real nuclei, tiled across a virtual slide."""
    path = fetch("hgsc_nest_inst_mask.npz")["hgsc_nest_inst_mask.npz"]
    labels = np.load(path)["nuc_raster"]
    base: list[Item] = []
    for k, sl in enumerate(ndimage.find_objects(labels)):
        if sl is not None:
            base.append((labels[sl] == k + 1,
                         (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)))
    out: list[Item] = []
    per_row = 60                                  # a 90,000 px wide virtual slide
    tile = 0
    while len(out) < n:
        ox, oy = (tile % per_row) * TILE, (tile // per_row) * TILE
        for mask, (x0, y0, x1, y1) in base[: n - len(out)]:
            out.append((mask, (x0 + ox, y0 + oy, x1 + ox, y1 + oy)))
        tile += 1
    return out


def pixel_union(mask: np.ndarray, window: tuple[int, int, int, int]):
    ys, xs = np.nonzero(mask)
    return shapely.union_all(shapely.box(xs + window[0], ys + window[1],
                                         xs + window[0] + 1, ys + window[1] + 1))


def contours(mask: np.ndarray, window: tuple[int, int, int, int]):
    rings = find_contours(np.pad(mask, 1).astype(np.uint8), 0.5)
    ring = max(rings, key=len)                    # (row, col) of the padded mask
    return Polygon(ring[:, ::-1] + np.array([window[0] - 0.5, window[1] - 0.5]))


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--baseline-n", type=int, default=500)
    args = parser.parse_args()
    items = real_objects(args.n)
    n, nb = len(items), min(args.baseline_n, len(items))
    pixels = sum(int(m.sum()) for m, _ in items)

    t_trace, geoms = timed(lambda: [mask_to_geometry(m, w) for m, w in items])
    objects = [AnnotationObject(id=i + 1, geometry=g, class_name="Nucleus", color=(0, 160, 255),
                                properties={"model": "wsi-sam", "score": 0.9})
               for i, g in enumerate(geoms)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "nuclei.geojson")
        t_write, _ = timed(lambda: write_geojson(objects, path, mpp=(0.25, 0.25)))
        size_mb = os.path.getsize(path) / 1e6
        t_read, result = timed(lambda: read_geojson(path))
    back = result.objects
    t_raster, masks = timed(lambda: [geometry_to_mask(o.geometry, w) for o, (_, w)
                                     in zip(back, items, strict=True)])
    exact = sum(bool((mk == m).all()) for (mk, _), (m, _) in zip(masks, items, strict=True))

    sub = items[:nb]
    t_union, _ = timed(lambda: [pixel_union(m, w) for m, w in sub])
    t_cont, cgeoms = timed(lambda: [contours(m, w) for m, w in sub])
    ious, area_ratio = [], []
    for g, (m, w) in zip(cgeoms, sub, strict=True):
        mk = geometry_to_mask(g, w)[0]
        ious.append((mk & m).sum() / (mk | m).sum())
        area_ratio.append(g.area / m.sum())
    scale = n / nb

    rows = [
        ("mask -> polygon (ours, exact)", n, t_trace, t_trace),
        ("write_geojson", n, t_write, None),
        ("read_geojson", n, t_read, None),
        ("rasterise back (geometry_to_mask)", n, t_raster, None),
        ("export total (polygons + write)", n, t_trace + t_write, None),
        (f"baseline: pixel-square union, {nb} scaled", n, t_union * scale, t_trace),
        (f"baseline: find_contours, {nb} scaled", n, t_cont * scale, t_trace),
    ]
    print(f"{n} objects, {pixels:,} px, file {size_mb:.1f} MB, "
          f"{sum(shapely.get_num_coordinates(g) for g in geoms):,} vertices")
    print(f"{'step':<42} {'objects':>8} {'seconds':>9} {'ms/object':>10} {'ratio':>7}")
    for name, count, secs, ref in rows:
        ratio = f"{secs / ref:7.1f}" if ref else f"{'':>7}"
        print(f"{name:<42} {count:>8} {secs:>9.2f} {1e3 * secs / count:>10.3f} {ratio}")
    print(f"round trip: {exact}/{n} objects rasterise back to identical pixels; "
          f"find_contours baseline: mean IoU {np.mean(ious):.4f}, min {np.min(ious):.4f}, "
          f"polygon area / pixel count {np.mean(area_ratio):.4f} (ours: 1 exactly)")


if __name__ == "__main__":
    main()
