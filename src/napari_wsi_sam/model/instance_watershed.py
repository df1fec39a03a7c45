"""From the instance decoder's three maps to labelled objects: a seeded watershed.

Seeds are the pixels confidently inside an object and near its centre (foreground above
`foreground`, centre distance below `centre`, boundary distance below `boundary`); each
connected seed grows over the boundary-distance map, within the foreground, until it meets
its neighbours. Touching nuclei are split where the boundary map rises between their centres.
A foreground blob that holds no seed (a thin nucleus whose centre map never gets confident)
is kept as one object when `unseeded` is on, instead of being lost. Objects under `min_size`
pixels are dropped. numpy and scikit-image only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed


@dataclass(frozen=True)
class WatershedSettings:
    """Thresholds on the maps (0..1), the smallest object in output pixels, and whether a
    seedless foreground blob becomes an object."""

    foreground: float = 0.5
    centre: float = 0.5
    boundary: float = 0.5
    min_size: int = 12
    unseeded: bool = False

    def __post_init__(self) -> None:
        for name in ("foreground", "centre", "boundary"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"the {name} threshold must lie between 0 and 1, got {value}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0 px, got {self.min_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> WatershedSettings:
        known = {k: raw[k] for k in ("foreground", "centre", "boundary", "min_size") if k in raw}
        return cls(**known, unseeded=bool(raw.get("unseeded", False)))


def instances_from_maps(maps: np.ndarray, settings: WatershedSettings | None = None
                        ) -> np.ndarray:
    """(3, H, W) [foreground, centre distance, boundary distance] in 0..1 -> (H, W) int32
    labels (0 background, objects 1..n)."""
    settings = settings or WatershedSettings()
    if maps.ndim != 3 or maps.shape[0] != 3:
        raise ValueError(f"maps must be (3, H, W), got {maps.shape}")
    foreground, centre, boundary = (np.asarray(m, np.float32) for m in maps)
    inside = foreground > settings.foreground
    seeds = inside & (centre < settings.centre) & (boundary < settings.boundary)
    markers, count = ndimage.label(seeds)
    if count == 0 and not settings.unseeded:
        return np.zeros(foreground.shape, np.int32)
    labels = (watershed(boundary, markers=markers, mask=inside).astype(np.int32) if count
              else np.zeros(foreground.shape, np.int32))
    if settings.unseeded:
        blobs, found = ndimage.label(inside & (labels == 0))
        if found:
            labels = np.where(blobs > 0, blobs + labels.max(), labels).astype(np.int32)
    if settings.min_size > 0:
        sizes = np.bincount(labels.ravel())
        small = np.flatnonzero(sizes < settings.min_size)
        small = small[small > 0]
        if small.size:
            labels[np.isin(labels, small)] = 0
    return _relabel(labels)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n in order of first appearance (no gaps)."""
    present = np.unique(labels)
    present = present[present > 0]
    lookup = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int32)
    lookup[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return lookup[labels]
