"""Concentric crops, the crop <-> slide map, and prompts."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.transform import downscale_local_mean, resize

from napari_wsi_sam.errors import MppMissingError, PromptError, SlideError
from napari_wsi_sam.prompts import Prompt
from napari_wsi_sam.slide import CropMap, CropPair, concentric_crops, open_slide
from napari_wsi_sam.slide.crops import cut_crop
from slide_factory import disc_image, make_image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="module")
def cmu(sample_slide):
    with open_slide(sample_slide) as slide:
        yield slide


# -- prompts ----------------------------------------------------------------------------------
def test_prompt_validation():
    p = Prompt(box=[10, 20, 30, 40], points=[[15, 25], [12, 22]], labels=[1, 0])
    assert p.bounds().tolist() == [10, 20, 30, 40]
    assert p.center().tolist() == [20, 30]
    assert not p.points.flags.writeable
    assert Prompt.from_points([[5, 6]]).labels.tolist() == [1]
    bad = [
        ({"box": [30, 20, 10, 40]}, "empty or inverted"),
        ({"box": [1, 2, 3]}, "4 numbers"),
        ({"box": [0, 0, np.nan, 4]}, "finite"),
        ({"points": [[1, 2, 3]], "labels": [1]}, r"shape \(N, 2\)"),
        ({"points": [[1, 2]], "labels": [1, 1]}, "1 points but 2 labels"),
        ({"points": [[1, 2]], "labels": [2]}, "1 \\(positive\\) or 0"),
        ({"points": [[1, 2]], "labels": [0]}, "at least one positive point"),
        ({}, "a box or at least one positive point"),
        ({"box": "abc"}, "must be numbers"),
    ]
    for kwargs, message in bad:
        with pytest.raises(PromptError, match=message) as info:
            Prompt(**kwargs)
        assert "\n" not in str(info.value)


def test_prompt_outside():
    box = Prompt.from_box([-50, -50, -1, 10])
    assert box.is_outside(100, 100)
    assert not Prompt.from_box([-50, -50, 1, 10]).is_outside(100, 100)
    assert Prompt.from_points([[100, 5]]).is_outside(100, 100)
    assert not Prompt.from_points([[99.9, 5], [500, 500]]).is_outside(100, 100)


# -- the map ----------------------------------------------------------------------------------
def test_cropmap_corner_convention():
    m = CropMap(origin=(100.0, 200.0), scale=(2.0, 4.0), size=(8, 8))
    # crop pixel (0, 0) covers slide [100, 102) x [200, 204); its centre is (101, 202)
    assert m.to_slide([[0.5, 0.5]]).tolist() == [[101.0, 202.0]]
    assert m.to_crop([[100, 200], [116, 232]]).tolist() == [[0, 0], [8, 8]]
    assert m.box_to_crop([102, 204, 104, 212]).tolist() == [1, 1, 2, 3]
    assert m.slide_window() == (100, 200, 116, 232)
    assert m.slide_window(downsample=4, clip=(20, 55)) == (20, 50, 20, 55)
    mask = np.zeros((8, 8), bool)
    mask[1, 2] = True  # crop col 2, row 1 -> slide x 104-106, y 204-208
    out, window = m.mask_to_slide(mask)
    assert window == (100, 200, 116, 232) and out.shape == (32, 16)
    ys, xs = np.nonzero(out)
    assert (xs.min() + 100, xs.max() + 101, ys.min() + 200, ys.max() + 201) == (104, 106, 204, 208)
    # a window reaching beyond the crop gets False there; a coarser grid samples centres
    out, _ = m.mask_to_slide(np.ones((8, 8), bool), window=(98, 198, 118, 234))
    assert not out[:, :2].any() and not out[:2].any() and out[2:34, 2:18].all()
    coarse, _ = m.mask_to_slide(mask, window=(50, 100, 56, 106), downsample=2)
    # level pixels (52, 102) and (52, 103) have centres (105, 205) and (105, 207)
    assert coarse.sum() == 2 and coarse[2:4, 2].all()


finite = st.floats(-1e5, 1e5, allow_nan=False, allow_infinity=False)
scales = st.floats(0.05, 64.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(ox=finite, oy=finite, sx=scales, sy=scales,
       xy=st.lists(st.tuples(finite, finite), min_size=1, max_size=8))
def test_points_round_trip(ox, oy, sx, sy, xy):
    m = CropMap(origin=(ox, oy), scale=(sx, sy), size=(1024, 1024))
    pts = np.array(xy, dtype=float)
    np.testing.assert_allclose(m.to_slide(m.to_crop(pts)), pts, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(m.to_crop(m.to_slide(pts)), pts, rtol=1e-9, atol=1e-6)
    homogeneous = np.c_[pts, np.ones(len(pts))] @ m.matrix().T
    np.testing.assert_allclose(homogeneous[:, :2], m.to_slide(pts), rtol=1e-9, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(ox=finite, oy=finite, sx=scales, sy=scales, x=finite, y=finite,
       w=st.floats(0.01, 1e4), h=st.floats(0.01, 1e4))
def test_boxes_round_trip(ox, oy, sx, sy, x, y, w, h):
    m = CropMap(origin=(ox, oy), scale=(sx, sy), size=(512, 512))
    box = np.array([x, y, x + w, y + h])
    back = m.box_to_slide(m.box_to_crop(box))
    np.testing.assert_allclose(back, box, rtol=1e-9, atol=1e-6)
    crop_box = m.box_to_crop(box)
    np.testing.assert_allclose(crop_box[2:] - crop_box[:2], [w / sx, h / sy], rtol=1e-6, atol=1e-6)
    prompt = Prompt(box=box)
    np.testing.assert_allclose(m.prompt_to_slide(m.prompt_to_crop(prompt)).box, box,
                               rtol=1e-9, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(cx=st.floats(0, 3000), cy=st.floats(0, 3000), mpp=st.floats(0.2, 20),
       slide_mpp=st.floats(0.1, 2), factor=st.floats(1, 8), size=st.sampled_from([256, 1024]),
       xy=st.lists(st.tuples(st.floats(0, 1024), st.floats(0, 1024)), min_size=1, max_size=5))
def test_concentric_relation(cx, cy, mpp, slide_mpp, factor, size, xy):
    def crop_map(m: float) -> CropMap:
        s = m / slide_mpp
        return CropMap(origin=(cx - size * s / 2, cy - size * s / 2), scale=(s, s),
                       size=(size, size))

    hr, lr = crop_map(mpp), crop_map(mpp * factor)
    pts = np.array(xy, dtype=float) * size / 1024
    expected = pts / factor + size * (1 - 1 / factor) / 2
    np.testing.assert_allclose(lr.to_crop(hr.to_slide(pts)), expected, rtol=1e-7, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(w=st.floats(4, 800), h=st.floats(4, 800), dx=st.floats(-0.4, 0.4))
def test_centred_box_maps_to_half_plus_quarter(cmu, w, h, dx):
    """On the real slide: a box centred on the crop centre -> LR box = HR box / 2 + size / 4
    (also when the box is large enough to raise the HR mpp)."""
    size = 64
    cx, cy = 1100.0 + dx, 1500.0
    box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    pair = concentric_crops(cmu, Prompt.from_box(box), size=size)
    assert pair.center == pytest.approx((cx, cy))
    np.testing.assert_allclose(pair.lr.map.box_to_crop(box),
                               pair.hr.map.box_to_crop(box) / 2 + size / 4, atol=1e-7)
    np.testing.assert_allclose(pair.hr_to_lr(np.array([[0.0, 0.0], [64.0, 64.0]])),
                               [[16, 16], [48, 48]], atol=1e-7)


# -- crops on the real slide ------------------------------------------------------------------
def test_concentric_crops_on_real_svs(cmu):
    prompt = Prompt.from_box([1000, 1400, 1300, 1600])
    pair = concentric_crops(cmu, prompt)
    assert isinstance(pair, CropPair)
    assert pair.center == (1150.0, 1500.0)
    assert pair.hr_mpp == pair.hr_mpp_requested == 1.0 and not pair.mpp_raised
    for crop, mpp, level in ((pair.hr, 1.0, 1), (pair.lr, 2.0, 2)):
        assert crop.image.shape == (1024, 1024, 3) and crop.image.dtype == np.uint8
        assert crop.valid.shape == (1024, 1024) and crop.valid.dtype == bool
        assert crop.mpp == mpp and crop.level == level and crop.source_level == 0
        np.testing.assert_allclose(crop.map.scale, (mpp / 0.499, mpp / 0.499))
        np.testing.assert_allclose(crop.map.to_crop([pair.center]), [[512, 512]])
    assert pair.hr.valid.all()
    assert 0.3 < pair.lr.valid_fraction < 0.5  # the slide is only 2220 px wide
    assert (pair.lr.image[~pair.lr.valid] == 255).all()
    np.testing.assert_allclose(pair.lr.map.box_to_crop(prompt.box),
                               pair.hr.map.box_to_crop(prompt.box) / 2 + 256)
    # the LR crop's centre half is the HR crop, 2x coarser
    centre = pair.lr.image[256:768, 256:768]
    assert psnr(centre, downscale_local_mean(pair.hr.image, (2, 2, 1))) > 35


def test_hr_crop_matches_level0_reference(cmu):
    """HR at 1.0 µm/px vs skimage's anti-aliased resize of level 0 over the same region."""
    crop = cut_crop(cmu, (1100.0, 1500.0), mpp=1.0, size=1024)
    x0, y0 = crop.map.origin
    scale = crop.map.scale[0]
    region = cmu.levels[0][round(y0):round(y0) + round(1024 * scale),
                           round(x0):round(x0) + round(1024 * scale)].compute()
    reference = resize(region, (1024, 1024), anti_aliasing=True, preserve_range=True)
    assert crop.level == 1
    assert psnr(crop.image, reference) >= 35


def test_integer_scale_equals_area_mean(cmu):
    """At exactly 2x (0.998 µm/px) on whole pixels, the crop is level 0's 2x2 mean."""
    crop = cut_crop(cmu, (1101.0, 1501.0), mpp=0.998, size=256)
    assert crop.map.origin == (845.0, 1245.0)
    region = cmu.levels[0][1245:1245 + 512, 845:845 + 512].compute()
    expected = downscale_local_mean(region, (2, 2, 1))
    assert np.abs(crop.image.astype(float) - expected).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("mpp", [0.5, 1.0, 1.7])
def test_crop_geometry_is_exact(tmp_path, mpp):
    """A disc at a sub-pixel position: its centroid in the crop maps back to where it is."""
    center, radius = (703.37, 611.81), 60.0
    path = make_image(tmp_path / "disc.png",
                      disc_image(width=1400, height=1200, center=center, radius=radius))
    with open_slide(path, mpp=0.5) as slide:
        crop = cut_crop(slide, (650.2, 640.9), mpp=mpp, size=512, pad_value=0)
    weights = crop.image[..., 0].astype(float)
    rows, cols = np.indices(weights.shape)
    centroid = np.array([[(weights * (cols + 0.5)).sum(), (weights * (rows + 0.5)).sum()]])
    centroid /= weights.sum()
    np.testing.assert_allclose(crop.map.to_slide(centroid)[0], center, atol=0.05)
    # mass is kept: the disc's area in crop pixels matches pi r^2 / scale^2
    area = weights.sum() / 255.0
    np.testing.assert_allclose(area, np.pi * (radius / crop.map.scale[0]) ** 2, rtol=0.01)


def test_mask_round_trip_on_real_crop(cmu):
    crop = cut_crop(cmu, (1100.0, 1500.0), mpp=1.0, size=128)
    mask = np.zeros((128, 128), bool)
    mask[40:90, 30:70] = True
    out, (x0, y0, x1, y1) = crop.map.mask_to_slide(mask)
    assert out.shape == (y1 - y0, x1 - x0)
    ys, xs = np.nonzero(out)
    slide_box = np.array([xs.min() + x0, ys.min() + y0, xs.max() + x0 + 1, ys.max() + y0 + 1])
    np.testing.assert_allclose(crop.map.box_to_crop(slide_box), [30, 40, 70, 90], atol=0.5)
    np.testing.assert_allclose(out.sum() * (1 / crop.map.scale[0]) ** 2, mask.sum(), rtol=0.03)


# -- fitting, edges, errors -------------------------------------------------------------------
def test_large_box_raises_hr_mpp(cmu, caplog):
    box = [100, 200, 2100, 1700]  # 2000 x 1500 px at 0.499 µm/px
    with caplog.at_level(logging.INFO):
        pair = concentric_crops(cmu, Prompt.from_box(box), size=512)
    assert pair.mpp_raised and "using" in caplog.text
    assert pair.hr_mpp == pytest.approx(1000 * 0.499 / (0.4 * 512))
    assert pair.lr.mpp == pytest.approx(2 * pair.hr_mpp)
    inner = pair.hr.map.box_to_crop(np.array(box, float))
    assert inner.min() >= 0.1 * 512 - 1e-6 and inner.max() <= 0.9 * 512 + 1e-6


def test_prompts_near_and_beyond_edges(cmu):
    pair = concentric_crops(cmu, Prompt.from_box([-100, -80, 60, 50]), size=256)
    for crop in (pair.hr, pair.lr):
        assert 0 < crop.valid_fraction < 0.5
        assert not crop.valid[0, 0] and crop.valid[-1, -1]
        assert (crop.image[~crop.valid] == 255).all()
        centres = crop.map.to_slide(np.c_[np.arange(256) + 0.5, np.arange(256) + 0.5])
        on_x = (centres[:, 0] >= 0) & (centres[:, 0] < 2220)
        on_y = (centres[:, 1] >= 0) & (centres[:, 1] < 2967)
        np.testing.assert_array_equal(crop.valid, on_y[:, None] & on_x[None, :])
    corner = concentric_crops(cmu, Prompt.from_points([[2219.5, 2966.5]]), size=128,
                              pad_value=0)
    assert corner.hr.valid_fraction == pytest.approx(0.25, abs=0.02)
    assert (corner.hr.image[~corner.hr.valid] == 0).all()


def test_prompt_outside_slide_and_settings(cmu, sample_slide):
    with pytest.raises(PromptError, match="entirely outside the 2220x2967 px slide") as info:
        concentric_crops(cmu, Prompt.from_box([3000, 10, 3100, 50]))
    assert "\n" not in str(info.value)
    with pytest.raises(SlideError, match="margin"):
        concentric_crops(cmu, Prompt.from_points([[5, 5]]), margin=0.5)
    with pytest.raises(SlideError, match="crop size"):
        concentric_crops(cmu, Prompt.from_points([[5, 5]]), size=8)


def test_points_centre_and_explicit_centre(cmu):
    prompt = Prompt.from_points([[1000, 1000], [1200, 1100]], labels=[1, 0])
    pair = concentric_crops(cmu, prompt, size=128, hr_mpp=4.0)
    assert pair.center == (1100.0, 1050.0)
    fixed = concentric_crops(cmu, prompt, size=128, hr_mpp=4.0, center=(1024.0, 1024.0))
    assert fixed.center == (1024.0, 1024.0)
    np.testing.assert_allclose(fixed.hr.map.to_crop([[1024.0, 1024.0]]), [[64, 64]])


def test_no_mpp_needs_one(asset_path):
    with open_slide(asset_path("boxes.tiff")) as slide:
        with pytest.raises(MppMissingError, match=r"boxes\.tiff has no pixel size"):
            concentric_crops(slide, Prompt.from_points([[100, 100]]))
        pair = concentric_crops(slide.with_mpp(0.5), Prompt.from_points([[100, 100]]), size=64)
        assert pair.hr.level == 1 and pair.lr.level == 2


def test_hr_to_lr_keeps_the_shape_of_point_batches(sample_slide):
    """(N, K, 2) points (several clicks per prompt) map point by point and keep their shape."""
    with open_slide(sample_slide) as slide:
        pair = concentric_crops(slide, Prompt.from_box([1000, 1000, 1100, 1080]), hr_mpp=1.0)
    points = np.array([[[512.0, 512.0], [600.0, 400.0]], [[0.0, 0.0], [1024.0, 1024.0]]])
    mapped = pair.hr_to_lr(points)
    assert mapped.shape == points.shape
    np.testing.assert_allclose(mapped, points / 2 + 256, atol=1e-6)
