"""The one place where napari's coordinates meet ours.

napari gives (row, col) positions in world units; our slide layers are shown with ``scale`` in
µm per level-0 pixel (and any ``translate``), and napari puts pixel centres on integer data
coordinates. Everything else in the package speaks level-0 pixels, (x, y), with pixel ``i``
covering ``[i, i + 1)``. So: ``x = (col_world - translate_col) / scale_col + 0.5``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def world_to_slide(
    rc_world: np.ndarray, *, scale: Sequence[float], translate: Sequence[float] = (0.0, 0.0)
) -> np.ndarray:
    """(N, 2) (row, col) world coordinates -> (N, 2) (x, y) level-0 pixel coordinates."""
    scale_rc, translate_rc = _yx(scale), _yx(translate)
    data_rc = (np.asarray(rc_world, dtype=float).reshape(-1, 2) - translate_rc) / scale_rc
    return (data_rc + 0.5)[:, ::-1].copy()


def slide_to_world(
    xy_slide: np.ndarray, *, scale: Sequence[float], translate: Sequence[float] = (0.0, 0.0)
) -> np.ndarray:
    """(N, 2) (x, y) level-0 pixel coordinates -> (N, 2) (row, col) world coordinates."""
    rc = np.asarray(xy_slide, dtype=float).reshape(-1, 2)[:, ::-1]
    return (rc - 0.5) * _yx(scale) + _yx(translate)


def box_from_world_corners(
    corners_rc: np.ndarray, *, scale: Sequence[float], translate: Sequence[float] = (0.0, 0.0)
) -> np.ndarray:
    """A napari rectangle's (4, 2) world corners -> XYXY box in level-0 pixels (its bounds)."""
    xy = world_to_slide(corners_rc, scale=scale, translate=translate)
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)])


def box_to_world_corners(
    box_xyxy: np.ndarray, *, scale: Sequence[float], translate: Sequence[float] = (0.0, 0.0)
) -> np.ndarray:
    """XYXY box in level-0 pixels -> (4, 2) (row, col) world corners, clockwise from top-left."""
    x0, y0, x1, y1 = np.asarray(box_xyxy, dtype=float)
    corners_xy = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    return slide_to_world(corners_xy, scale=scale, translate=translate)


def _yx(values: Sequence[float]) -> np.ndarray:
    """The last two (row, col) entries of a layer's per-axis scale or translate."""
    return np.asarray(values, dtype=float)[-2:]
