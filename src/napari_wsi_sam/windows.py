"""Windows and masks over windows: the one vocabulary for "this mask, at this place".

A `Window` is ``(x0, y0, x1, y1)`` in integer pixels of some grid (level-0 slide pixels, or
crop pixels), x1/y1 exclusive, pixel ``i`` covering ``[i, i + 1)``. A `WindowMask` is a bool
mask stored tight at its origin on that grid. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

Window: TypeAlias = tuple[int, int, int, int]
"""(x0, y0, x1, y1) integer pixels, x1/y1 exclusive."""


@dataclass(frozen=True)
class WindowMask:
    """A mask stored tight: ``mask`` (h, w) bool whose pixel [0, 0] is grid pixel ``origin``."""

    mask: np.ndarray
    origin: tuple[int, int]

    @classmethod
    def from_window(cls, mask: np.ndarray, window: Window) -> WindowMask:
        return cls(np.asarray(mask, dtype=bool), (int(window[0]), int(window[1])))

    @property
    def window(self) -> Window:
        """The window the mask array covers (not tightened to its set pixels)."""
        x0, y0 = self.origin
        h, w = self.mask.shape
        return x0, y0, x0 + w, y0 + h

    @property
    def box(self) -> np.ndarray:
        """Tight XYXY box of the set pixels (pixel i covers [i, i + 1))."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        cols = np.flatnonzero(self.mask.any(axis=0))
        x0, y0 = self.origin
        return np.array([x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1],
                        dtype=np.float64)

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def dense(self, size: int) -> np.ndarray:
        """The mask pasted into a (size, size) bool grid from the origin (cut at its edges)."""
        out = np.zeros((size, size), dtype=bool)
        x0, y0 = self.origin
        h, w = self.mask.shape
        ys, xs = max(0, -y0), max(0, -x0)
        ye, xe = min(h, size - y0), min(w, size - x0)
        if ye > ys and xe > xs:
            out[y0 + ys:y0 + ye, x0 + xs:x0 + xe] = self.mask[ys:ye, xs:xe]
        return out
