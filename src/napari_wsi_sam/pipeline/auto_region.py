"""What every Segment all method shares: the region, the progress it reports and the
de-duplication that keeps a rerun (or an object drawn by hand) from being repeated.

Coordinates are level-0 slide pixels (x, y).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import box as shapely_box

from ..errors import PromptError
from ..polygons import Areal, polygonal
from ..slide import Slide
from ..store.object_store import ObjectStore


@dataclass(frozen=True)
class AutoProgress:
    """After one crop: ``done`` of ``total`` crops, ``added`` objects stored so far by this
    run, ``ids`` the ids stored for this crop, ``found`` the stored objects this run found
    again so far (a rerun's, or ones made by hand), ``seconds_left`` estimated from the crops
    done, ``points`` prompted in this crop."""

    done: int
    total: int
    added: int
    ids: tuple[int, ...]
    seconds_left: float | None
    found: tuple[int, ...] = ()
    points: int = 0


def as_region(region: Areal | Sequence[float]) -> Areal:
    """A region as a polygon: an (x0, y0, x1, y1) box or a Polygon/MultiPolygon (level-0 px)."""
    if isinstance(region, shapely.Geometry):
        area = polygonal(region)
    else:
        values = [float(v) for v in region]
        if len(values) != 4:
            raise PromptError(f"a region is 4 numbers x0 y0 x1 y1, got {len(values)}")
        x0, y0, x1, y1 = values
        if not (x1 > x0 and y1 > y0):
            raise PromptError(f"region {values} is empty or inverted; give x0 < x1 and y0 < y1")
        area = shapely_box(x0, y0, x1, y1)
    if area.is_empty or area.area <= 0:
        raise PromptError("the region is empty; draw a rectangle or polygon around the objects")
    return area


def fit_region(slide: Slide, region: Areal | Sequence[float]) -> Areal:
    """The region cut to the slide; one-line PromptError when nothing of it is on the slide."""
    area = as_region(region)
    width, height = slide.dimensions
    cut = polygonal(shapely.intersection(area, shapely_box(0, 0, width, height)))
    if cut.is_empty or cut.area <= 0:
        bounds = [round(v, 1) for v in area.bounds]
        raise PromptError(f"the region {bounds} lies outside the {width}x{height} px slide "
                          f"{slide.path.name}")
    return cut


@dataclass
class Accepted:
    """Objects this run keeps and the stored ones it must not repeat, for de-duplication;
    ``ids`` holds each stored object's id (None for one of this run's) and ``found`` the
    stored objects a candidate matched (a rerun finds its own objects again)."""

    overlap: float
    geometries: list[Areal] = field(default_factory=list)
    bounds: list[tuple[float, float, float, float]] = field(default_factory=list)
    ids: list[int | None] = field(default_factory=list)
    found: set[int] = field(default_factory=set)

    def add(self, geometry: Areal, object_id: int | None = None) -> None:
        self.geometries.append(geometry)
        self.bounds.append(geometry.bounds)
        self.ids.append(object_id)

    def covers(self, points: np.ndarray) -> np.ndarray:
        """(n,) bool: which of the (n, 2) level-0 points lie inside a kept object (a stored
        one that holds a point is recorded as found: the point would find it again)."""
        inside = np.zeros(len(points), bool)
        if not self.bounds or len(points) == 0:
            return inside
        b = np.asarray(self.bounds)
        x, y = points[:, 0], points[:, 1]
        near = np.flatnonzero((b[:, 0] <= x.max()) & (b[:, 2] >= x.min())
                              & (b[:, 1] <= y.max()) & (b[:, 3] >= y.min()))
        for i in near:
            hit = shapely.contains_xy(self.geometries[i], x, y)
            stored = self.ids[i]
            if stored is not None and hit.any():
                self.found.add(stored)
            inside |= hit
        return inside

    def duplicates(self, geometry: Areal) -> bool:
        """Whether `geometry` is an object already kept: an earlier one covers more than
        ``overlap`` of the smaller of the two (a stored one is then recorded as found)."""
        if not self.bounds:
            return False
        b = np.asarray(self.bounds)
        x0, y0, x1, y1 = geometry.bounds
        near = np.flatnonzero((b[:, 0] < x1) & (b[:, 2] > x0) & (b[:, 1] < y1) & (b[:, 3] > y0))
        area = geometry.area
        for i in near:
            other = self.geometries[i]
            shared = shapely.intersection(geometry, other).area
            if shared > self.overlap * min(area, other.area):
                stored = self.ids[i]
                if stored is not None:
                    self.found.add(stored)
                return True
        return False


def stored_in_region(store: ObjectStore, region: Areal, *, overlap: float, largest: float
                     ) -> Accepted:
    """The store's live objects near the region that a run could have made (at most
    `largest` level-0 px²), so a rerun, or an object drawn by hand, is found again instead of
    repeated, with the same rule a run applies to its own objects. Larger objects (the
    region's own outline, tissue) are no duplicates of anything a run finds."""
    accepted = Accepted(overlap)
    x0, y0, x1, y1 = region.bounds
    window = (int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1)))
    for obj in store.query(window):
        if obj.area <= largest:
            accepted.add(obj.geometry, obj.id)
    return accepted
