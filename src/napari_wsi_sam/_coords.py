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
    rc = np.asarray(rc_world, dtype=float).reshape(-1, 2)
    scale_rc = np.asarray(scale, dtype=float)[-2:]
    translate_rc = np.asarray(translate, dtype=float)[-2:]
    data_rc = (rc - translate_rc) / scale_rc + 0.5
    return data_rc[:, ::-1].copy()


def slide_to_world(
    xy_slide: np.ndarray, *, scale: Sequence[float], translate: Sequence[float] = (0.0, 0.0)
) -> np.ndarray:
    """(N, 2) (x, y) level-0 pixel coordinates -> (N, 2) (row, col) world coordinates."""
    xy = np.asarray(xy_slide, dtype=float).reshape(-1, 2)
    scale_rc = np.asarray(scale, dtype=float)[-2:]
    translate_rc = np.asarray(translate, dtype=float)[-2:]
    return (xy[:, ::-1] - 0.5) * scale_rc + translate_rc


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
