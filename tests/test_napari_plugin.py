"""The plugin in a real napari viewer under Xvfb, on the real CMU slide."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from napari_wsi_sam.ui.coords import box_to_world_corners
from napari_wsi_sam.ui.layers import FIELDS_LAYER, PROMPTS_LAYER
from napari_wsi_sam.ui.reader import napari_get_reader
from napari_wsi_sam.ui.slide_layer import META_KEY
from napari_wsi_sam.ui.widget import WsiSamWidget

pytestmark = [pytest.mark.napari, pytest.mark.slow]  # a Qt viewer under Xvfb, the model on CPU

DEMO_BOX = np.array([1185.0, 1980.0, 1345.0, 2185.0])  # a hair follicle in the CMU slide


def test_manifest_is_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-wsi-sam")
    manifest.validate_imports()
    assert {c.id for c in manifest.contributions.commands} >= {
        "napari-wsi-sam.get_reader", "napari-wsi-sam.make_sample_slide",
        "napari-wsi-sam.make_dock_widget"}


def test_reader_claims_only_slide_files(sample_slide):
    assert napari_get_reader("notes.txt") is None
    assert napari_get_reader(["a.svs", "b.svs"]) is None
    assert callable(napari_get_reader(str(sample_slide)))


def test_open_slide_in_napari_gives_one_multiscale_layer_in_um(make_napari_viewer, sample_slide):
    viewer = make_napari_viewer()
    layers = viewer.open(str(sample_slide), plugin="napari-wsi-sam")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.multiscale and layer.rgb
    assert len(layer.data) >= 2
    assert layer.data[0].shape == (2967, 2220, 3)
    np.testing.assert_allclose(layer.scale, [0.499, 0.499])
    meta = layer.metadata[META_KEY]
    assert meta["slide_path"] == str(sample_slide)
    assert meta["mpp"] == pytest.approx([0.499, 0.499])


def test_sample_data_contribution(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-wsi-sam", "cmu_small_region")
    assert viewer.layers[0].metadata[META_KEY]["vendor"] == "aperio"


def test_corrupt_slide_is_one_line_error(make_napari_viewer, asset_path):
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match=r"unopenable\.tiff") as info:
        viewer.open(str(asset_path("unopenable.tiff")), plugin="napari-wsi-sam")
    assert len(viewer.layers) == 0
    assert "\n" not in str(info.value.__cause__ or info.value).strip()


@pytest.fixture
def slide_copy(sample_slide, tmp_path):
    """The sample slide copied to a fresh folder: its object store lands beside it."""
    copy = tmp_path / sample_slide.name
    shutil.copy(sample_slide, copy)
    return copy


@pytest.fixture
def viewer_with_widget(make_napari_viewer, slide_copy):
    viewer = make_napari_viewer(show=True)
    viewer.open(str(slide_copy), plugin="napari-wsi-sam")
    _, widget = viewer.window.add_plugin_dock_widget("napari-wsi-sam", "WSI-SAM")
    assert isinstance(widget, WsiSamWidget)
    widget.live.value = False  # tests add shapes by code, then act explicitly
    return viewer, widget


def test_widget_outlines_concentric_fields_around_a_drawn_box(viewer_with_widget, qtbot):
    viewer, widget = viewer_with_widget
    slide_layer = viewer.layers[0]
    prompts = viewer.layers[PROMPTS_LAYER]
    corners = box_to_world_corners(DEMO_BOX, scale=slide_layer.scale)
    prompts.add_rectangles([corners / prompts.scale])  # the layer's data coordinates
    np.testing.assert_allclose(widget.annotator.last_box, DEMO_BOX, atol=1e-6)

    widget.show_crop_fields()
    qtbot.waitUntil(lambda: FIELDS_LAYER in viewer.layers, timeout=30_000)
    fields = viewer.layers[FIELDS_LAYER]
    hr_field, lr_field = (np.asarray(s) * fields.scale + fields.translate for s in fields.data)
    centre_world = corners.mean(axis=0)
    # HR: 1024 px at 1.0 µm/px = 1024 µm wide; LR twice that; both centred on the box.
    for field, width_um in ((hr_field, 1024.0), (lr_field, 2048.0)):
        np.testing.assert_allclose(field.mean(axis=0), centre_world, atol=0.01)
        np.testing.assert_allclose(np.ptp(field, axis=0), [width_um, width_um], rtol=1e-6)
    assert widget.last_crops.hr.image.shape == (1024, 1024, 3)
    assert "HR 1.00" in widget.status


def test_widget_reports_empty_prompts_layer_without_raising(viewer_with_widget):
    viewer, widget = viewer_with_widget
    widget.show_crop_fields()
    assert FIELDS_LAYER not in viewer.layers and "no box yet" in widget.status


def test_screenshot_shows_the_slide(viewer_with_widget):
    viewer, _ = viewer_with_widget
    shot = viewer.screenshot(canvas_only=True)
    assert shot.ndim == 3 and shot.shape[0] > 100
    assert shot[..., :3].std() > 10  # tissue, not a black or empty canvas


def test_view_command_writes_a_screenshot_with_the_widget(sample_slide, tmp_path):
    png = tmp_path / "napari.png"
    result = subprocess.run(
        [sys.executable, "-m", "napari_wsi_sam.cli", "view", str(sample_slide),
         "--screenshot", str(png)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    from skimage.io import imread

    image = imread(png)
    assert image.shape[1] > 800
    assert image[..., :3].std() > 10


def test_slide_without_pixel_size_asks_for_one(make_napari_viewer, qtbot, asset_path,
                                                tmp_path):
    viewer = make_napari_viewer()
    boxes = tmp_path / "boxes.tiff"
    shutil.copy(asset_path("boxes.tiff"), boxes)
    viewer.open(str(boxes), plugin="napari-wsi-sam")  # no mpp in the file
    _, widget = viewer.window.add_plugin_dock_widget("napari-wsi-sam", "WSI-SAM")
    widget.live.value = False
    assert "no pixel size" in widget.slide_info.value
    assert widget.mpp.enabled
    slide_layer = viewer.layers[0]
    prompts = viewer.layers[PROMPTS_LAYER]
    corners = box_to_world_corners(np.array([100.0, 100.0, 300.0, 250.0]), scale=slide_layer.scale)
    prompts.add_rectangles([corners / prompts.scale])

    widget.show_crop_fields()
    qtbot.waitUntil(lambda: "pixel size" in widget.status, timeout=30_000)
    assert FIELDS_LAYER not in viewer.layers

    widget.mpp.value = 0.25
    widget.show_crop_fields()
    qtbot.waitUntil(lambda: FIELDS_LAYER in viewer.layers, timeout=30_000)
    assert widget.last_crops.hr.image.shape == (1024, 1024, 3)
