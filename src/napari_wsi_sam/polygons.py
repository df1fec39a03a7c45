"""Masks <-> polygons in level-0 slide pixels, exactly, with holes. Pure numpy + shapely.

Coordinates are continuous level-0 pixels, x then y, pixel ``(col i, row j)`` covering
``[i, i + 1) x [j, j + 1)``. A mask comes with its ``window`` ``(x0, y0, x1, y1)`` (level-0
ints, x1/y1 exclusive), so ``mask[j, i]`` is the pixel at ``(x0 + i, y0 + j)``.

`mask_to_geometry` traces the pixel edges themselves: every vertex sits on an integer pixel
corner, and only corners where the outline turns are kept. `geometry_to_mask` sets a pixel when
its centre lies inside the geometry (even-odd over all rings, so holes stay empty). Pixel
centres never lie on a traced outline, so mask -> geometry -> mask gives back the same pixels.

Where two foreground pixels touch only at a corner, the outline keeps them apart (the
foreground is 4-connected): they become two polygons meeting at a point, which is valid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import TypeAlias

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from .errors import AnnotationError
from .windows import Window

logger = logging.getLogger(__name__)

Areal: TypeAlias = Polygon | MultiPolygon

# Edge directions in (x, y): 0 = +x, 1 = +y, 2 = -x, 3 = -y. Turning "left" (towards the
# interior, which lies left of every traced edge) is d -> (d + 1) % 4.
_STEP = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.int64)


def mask_to_geometry(mask: np.ndarray, window: Window, *, tolerance: float = 0.0) -> Areal:
    """Outline of the set pixels of ``mask`` as a valid Polygon or MultiPolygon with holes.

    mask : (h, w) bool (anything nonzero counts as set), pixels of ``window``.
    window : (x0, y0, x1, y1) level-0 ints, ``x1 - x0 == w`` and ``y1 - y0 == h``.
    tolerance : level-0 px; 0 (default) keeps the exact pixel-edge outline. A positive value
        simplifies it (Douglas-Peucker, topology kept): no vertex moves more than ``tolerance``,
        files get smaller, and the outline no longer follows pixel edges exactly.

    Returns an empty Polygon when no pixel is set. Coordinates are level-0 pixels (x, y);
    exterior rings run counter-clockwise in (x, y) (RFC 7946), holes clockwise.
    """
    arr = np.asarray(mask)
    x0, y0 = _check_window(arr, window)
    if tolerance < 0 or not math.isfinite(tolerance):
        raise AnnotationError(f"tolerance must be a finite number >= 0 px, got {tolerance!r}")
    arr = arr.astype(bool, copy=False)
    rows = np.flatnonzero(arr.any(axis=1))
    if rows.size == 0:
        return Polygon()
    cols = np.flatnonzero(arr.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    geom = _trace(arr[r0:r1, c0:c1], x0 + int(c0), y0 + int(r0))
    if tolerance > 0:
        geom = polygonal(shapely.simplify(geom, tolerance, preserve_topology=True))
    return geom


def geometry_to_mask(geometry: BaseGeometry,
                     window: Window | None = None) -> tuple[np.ndarray, Window]:
    """Rasterise a Polygon / MultiPolygon: a pixel is set when its centre lies inside.

    geometry : level-0 px (x, y). Holes stay empty; parts must not overlap (valid geometry).
    window : (x0, y0, x1, y1) level-0 ints to rasterise into; None takes the pixel-aligned
        bounds of the geometry.

    Returns ``(mask, window)``, mask (y1 - y0, x1 - x0) bool.
    """
    if not isinstance(geometry, Polygon | MultiPolygon):
        raise AnnotationError(f"can only rasterise a Polygon or MultiPolygon, "
                              f"got {geometry.geom_type}")
    if window is None:
        if geometry.is_empty:
            raise AnnotationError("cannot choose a window for an empty geometry; pass window=")
        minx, miny, maxx, maxy = geometry.bounds
        window = (math.floor(minx), math.floor(miny), math.ceil(maxx), math.ceil(maxy))
    x0, y0, x1, y1 = (int(v) for v in window)
    if x1 < x0 or y1 < y0:
        raise AnnotationError(f"window {window} is inverted; give x0 <= x1 and y0 <= y1")
    centres_x = x0 + np.arange(x1 - x0) + 0.5
    centres_y = y0 + np.arange(y1 - y0) + 0.5
    return rasterize(geometry, centres_x, centres_y), (x0, y0, x1, y1)


def labels_to_geometries(labels: np.ndarray, *, origin: tuple[int, int] = (0, 0),
                         tolerance: float = 0.0) -> Iterator[tuple[int, Areal]]:
    """Yield ``(label, geometry)`` for every nonzero label of an instance label image.

    labels : (h, w) int, 0 = background; ``labels[j, i]`` is level-0 pixel
        ``(origin[0] + i, origin[1] + j)``. Labels are yielded in increasing order.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise AnnotationError(f"labels must be a 2-D integer image, got {lab.dtype} {lab.shape}")
    ox, oy = int(origin[0]), int(origin[1])
    values = np.unique(lab)
    values = values[values != 0]
    if values.size and values.min() < 0:
        raise AnnotationError(f"labels must be >= 0, found {int(values.min())}")
    # find_objects wants 1..N; remap sparse labels to a dense range first.
    dense = np.zeros_like(lab, dtype=np.int64)
    dense[lab != 0] = np.searchsorted(values, lab[lab != 0]) + 1
    for k, sl in enumerate(ndimage.find_objects(dense)):
        if sl is None:
            continue
        sub = dense[sl] == k + 1
        window = (ox + sl[1].start, oy + sl[0].start, ox + sl[1].stop, oy + sl[0].stop)
        yield int(values[k]), mask_to_geometry(sub, window, tolerance=tolerance)


# -- tracing ---------------------------------------------------------------------------------
def _check_window(arr: np.ndarray, window: Window) -> tuple[int, int]:
    if arr.ndim != 2:
        raise AnnotationError(f"mask must be 2-D (h, w), got shape {arr.shape}")
    try:
        x0, y0, x1, y1 = (int(v) for v in window)
    except (TypeError, ValueError) as err:
        raise AnnotationError(f"window must be 4 ints x0 y0 x1 y1, got {window!r}") from err
    if (y1 - y0, x1 - x0) != arr.shape:
        raise AnnotationError(f"window {window} is {x1 - x0}x{y1 - y0} px (w x h) but the mask "
                              f"is {arr.shape[1]}x{arr.shape[0]}")
    return x0, y0


def _edges(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary edges of a padded mask: (E, 2) start corners (x, y) and (E,) dirs.

    Every edge has the set pixels on its left in (x, y), so outer rings have positive area.
    """
    above, below = m[:-1, :], m[1:, :]
    left, right = m[:, :-1], m[:, 1:]
    parts = []
    ys, xs = np.nonzero(below & ~above)          # interior below y = ys + 1: run +x
    parts.append((xs, ys + 1, 0))
    ys, xs = np.nonzero(above & ~below)          # interior above: run -x from the right end
    parts.append((xs + 1, ys + 1, 2))
    ys, xs = np.nonzero(right & ~left)           # interior right of x = xs + 1: run -y
    parts.append((xs + 1, ys + 1, 3))
    ys, xs = np.nonzero(left & ~right)           # interior left: run +y
    parts.append((xs + 1, ys, 1))
    start = np.empty((sum(len(x) for x, _, _ in parts), 2), dtype=np.int64)
    dirs = np.empty(len(start), dtype=np.int64)
    i = 0
    for x, y, d in parts:
        start[i:i + len(x), 0] = x
        start[i:i + len(x), 1] = y
        dirs[i:i + len(x)] = d
        i += len(x)
    return start, dirs


def _trace(m: np.ndarray, x0: int, y0: int) -> Areal:
    """Exact outline of a cropped mask whose pixel (0, 0) is level-0 (x0, y0)."""
    padded = np.zeros((m.shape[0] + 2, m.shape[1] + 2), dtype=bool)
    padded[1:-1, 1:-1] = m
    start, dirs = _edges(padded)
    width = padded.shape[1] + 1
    sid = start[:, 1] * width + start[:, 0]
    end = start + _STEP[dirs]
    eid = end[:, 1] * width + end[:, 0]
    order = np.argsort(sid, kind="stable")
    sorted_sid = sid[order]
    k = np.searchsorted(sorted_sid, eid)
    nxt = order[k]
    # A corner with two outgoing edges is a saddle (pixels touching diagonally): take the
    # left turn, which keeps hugging the same pixel, so diagonal neighbours stay apart.
    k2 = np.minimum(k + 1, len(order) - 1)
    saddle = sorted_sid[k2] == eid
    saddle &= k2 > k
    has_saddle = bool(saddle.any())
    if has_saddle:
        alt = order[k2]
        want = (dirs + 1) % 4
        nxt = np.where(saddle & (dirs[nxt] != want), alt, nxt)
    prev = np.empty_like(nxt)
    prev[nxt] = np.arange(len(nxt))
    corner = dirs != dirs[prev]                  # the edge starts where the outline turns
    shells: list[np.ndarray] = []
    holes: list[np.ndarray] = []
    offset = np.array([x0 - 1, y0 - 1], dtype=np.int64)
    for ring in _cycles(nxt):
        ring = ring[corner[ring]]
        xy = start[ring] + offset
        area2 = _signed_area2(xy)
        (shells if area2 > 0 else holes).append(np.vstack([xy, xy[:1]]).astype(float))
    geom = _assemble(shells, holes)
    if has_saddle and not geom.is_valid:
        # A ring that passes one corner twice (an outline pinched by a diagonal gap) is
        # "self-touching"; make_valid re-expresses it (e.g. as a hole touching the shell).
        logger.debug("outline at (%d, %d) self-touches; repairing with make_valid", x0, y0)
        geom = polygonal(shapely.make_valid(geom, method="structure", keep_collapsed=False))
    return geom


def _cycles(nxt: np.ndarray) -> Iterator[np.ndarray]:
    """Split the permutation ``nxt`` into its cycles, each as an array of edge indices."""
    link = nxt.tolist()
    seen = bytearray(len(link))
    for first in range(len(link)):
        if seen[first]:
            continue
        ring = []
        e = first
        while not seen[e]:
            seen[e] = 1
            ring.append(e)
            e = link[e]
        yield np.asarray(ring, dtype=np.int64)


def _signed_area2(xy: np.ndarray) -> int:
    x, y = xy[:, 0], xy[:, 1]
    return int(x[:-1] @ y[1:] - x[1:] @ y[:-1] + x[-1] * y[0] - x[0] * y[-1])


def _assemble(shells: list[np.ndarray], holes: list[np.ndarray]) -> Areal:
    if len(shells) == 1:
        return Polygon(shells[0], holes)
    polys = [Polygon(s) for s in shells]
    owned: list[list[np.ndarray]] = [[] for _ in shells]
    areas = [p.area for p in polys]
    for hole in holes:
        # The pixel just right of the hole's first edge is background inside the hole; its
        # owner is the smallest shell containing that pixel centre.
        (ax, ay), (bx, by) = hole[0], hole[1]
        dx, dy = np.sign(bx - ax), np.sign(by - ay)
        probe = shapely.Point(ax + 0.5 * dx - 0.5 * dy, ay + 0.5 * dy + 0.5 * dx)
        inside = [i for i, p in enumerate(polys) if p.contains(probe)]
        if not inside:
            raise AnnotationError("internal error: a traced hole lies in no outline")
        owned[min(inside, key=areas.__getitem__)].append(hole)
    return MultiPolygon([Polygon(s, h) for s, h in zip(shells, owned, strict=True)])


def polygonal(geom: BaseGeometry) -> Areal:
    """The polygonal part of any geometry as a (Multi)Polygon (empty Polygon if none),
    exterior rings counter-clockwise in (x, y) as RFC 7946 asks; lines and points dropped."""
    if isinstance(geom, Polygon | MultiPolygon):
        return shapely.orient_polygons(geom)
    polys = list(_parts(geom))
    if not polys:
        return Polygon()
    return shapely.orient_polygons(polys[0] if len(polys) == 1 else MultiPolygon(polys))


def as_areal(geom: BaseGeometry | None) -> tuple[Areal | None, str]:
    """``(area, "")`` for anything with an area, repaired when invalid, else ``(None, why)``.

    Every annotation reader goes through here. Invalid outlines (self-crossing, ...) are
    repaired with shapely's ``make_valid`` and only their polygonal parts are kept, so a bow-tie
    stays two triangles rather than being dropped.
    """
    if geom is None:
        return None, "no geometry"
    kind = geom.geom_type
    if geom.is_empty:
        return None, f"empty {kind}"
    if not isinstance(geom, Polygon | MultiPolygon):
        geom = polygonal(geom)
        if geom.is_empty:
            return None, f"{kind} geometry is not an area"
    if not geom.is_valid:
        reason = shapely.is_valid_reason(geom)
        geom = polygonal(shapely.make_valid(geom, method="structure", keep_collapsed=False))
        if geom.is_empty:
            return None, f"invalid {kind} ({reason}) with no area left after repair"
        logger.info("repaired an invalid %s (%s)", kind, reason)
    return polygonal(geom), ""


def exterior_parts(geometry: Areal, name: str, fmt: str) -> list[Polygon]:
    """The non-empty parts of `geometry` for a format without holes (`fmt`); holes are dropped
    with a warning naming the object (`name`)."""
    geom = shapely.orient_polygons(geometry)
    parts = list(geom.geoms) if isinstance(geom, MultiPolygon) else [geom]
    parts = [p for p in parts if not p.is_empty]
    if any(p.interiors for p in parts):
        logger.warning("%s has holes, which %s cannot hold; writing its outer outline only",
                       name, fmt)
    return parts


def _parts(geom: BaseGeometry) -> Iterator[Polygon]:
    if isinstance(geom, Polygon):
        if not geom.is_empty:
            yield geom
    elif hasattr(geom, "geoms"):
        for part in geom.geoms:
            yield from _parts(part)


# -- rasterising -----------------------------------------------------------------------------
def rasterize(geometry: BaseGeometry, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Which sample points lie inside a Polygon / MultiPolygon (even-odd, holes empty).

    xs, ys : (n,), (m,) strictly increasing sample coordinates in level-0 px (pixel centres
        are ``i + 0.5``; a coarse level samples the level-0 pixel under each of its centres).
    Returns (m, n) bool: ``out[j, i]`` is True when ``(xs[i], ys[j])`` is inside.
    """
    xs = np.asarray(xs, dtype=float)
    ys = np.asarray(ys, dtype=float)
    out = np.zeros((len(ys), len(xs)), dtype=bool)
    for poly in _parts(geometry):
        out |= _fill(poly, xs, ys)
    return out


def _fill(poly: Polygon, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Samples (xs, ys) whose point lies inside ``poly`` (even-odd over all its rings)."""
    h, w = len(ys), len(xs)
    out = np.zeros((h, w), dtype=bool)
    segs = []
    for ring in (poly.exterior, *poly.interiors):
        xy = np.asarray(ring.coords, dtype=float)
        segs.append(np.hstack([xy[:-1], xy[1:]]))
    ax, ay, bx, by = np.vstack(segs).T
    lo, hi = np.minimum(ay, by), np.maximum(ay, by)
    # Sample row j is crossed by an edge when lo <= ys[j] < hi.
    j0 = np.searchsorted(ys, lo, side="left")
    j1 = np.searchsorted(ys, hi, side="left")
    count = np.maximum(j1 - j0, 0)
    if count.sum() == 0 or w == 0:
        return out
    idx = np.repeat(np.arange(len(ax)), count)
    row = np.repeat(j0, count) + (np.arange(idx.size) - np.repeat(np.cumsum(count) - count, count))
    yc = ys[row]
    t = (yc - ay[idx]) / (by[idx] - ay[idx])
    xc = ax[idx] + t * (bx[idx] - ax[idx])
    order = np.lexsort((xc, row))
    row, xc = row[order], xc[order]
    if row.size % 2:
        raise AnnotationError("internal error: odd number of ring crossings in a row")
    r, xa, xb = row[0::2], xc[0::2], xc[1::2]
    # Sample i is inside a span [xa, xb) when xa <= xs[i] < xb.
    ia = np.searchsorted(xs, xa, side="left")
    ib = np.searchsorted(xs, xb, side="left")
    diff = np.zeros((h, w + 1), dtype=np.int32)
    np.add.at(diff, (r, ia), 1)
    np.add.at(diff, (r, ib), -1)
    out[:] = np.cumsum(diff[:, :w], axis=1) > 0
    return out
