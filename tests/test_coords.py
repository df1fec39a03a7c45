"""The napari <-> level-0 conversion is exact and consistent with napari's pixel centres."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from napari_wsi_sam.ui.coords import (
    box_from_world_corners,
    box_to_world_corners,
    slide_to_world,
    world_to_slide,
)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
positive = st.floats(min_value=0.05, max_value=20.0)


@given(x=finite, y=finite, sy=positive, sx=positive, ty=finite, tx=finite)
def test_world_slide_round_trip(x, y, sy, sx, ty, tx):
    xy = np.array([[x, y]])
    world = slide_to_world(xy, scale=(sy, sx), translate=(ty, tx))
    back = world_to_slide(world, scale=(sy, sx), translate=(ty, tx))
    np.testing.assert_allclose(back, xy, rtol=1e-9, atol=1e-6)


def test_napari_pixel_centre_is_our_half_pixel():
    # napari draws pixel (row 3, col 7) centred on data (3, 7); for us that pixel covers
    # [7, 8) x [3, 4), so its centre is (7.5, 3.5).
    xy = world_to_slide(np.array([[3 * 0.5, 7 * 0.25]]), scale=(0.5, 0.25))
    np.testing.assert_allclose(xy, [[7.5, 3.5]])


def test_box_round_trip_and_order():
    box = np.array([100.0, 200.0, 300.0, 260.0])
    corners = box_to_world_corners(box, scale=(0.5, 0.5), translate=(10.0, -4.0))
    assert corners.shape == (4, 2)
    np.testing.assert_allclose(box_from_world_corners(corners, scale=(0.5, 0.5),
                                                      translate=(10.0, -4.0)), box)
