"""Annotating the real CMU slide in a real napari viewer (Xvfb) with the real MobileSAM weights:
draw, select, refine, re-class, delete, undo, batch, Segment all, import, export, two viewers,
reopen.

The tests act as a user does, on the layers (drawing rectangles, clicking) and the dock's
controls, and check the layers and the session's store."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from shapely.geometry import Polygon
from shapely.geometry import box as shapely_box

from napari_wsi_sam.formats import AnnotationObject, read_geojson, write_geojson
from napari_wsi_sam.model import registry
from napari_wsi_sam.model.build import build_predictor
from napari_wsi_sam.model.head_checkpoint import save_head
from napari_wsi_sam.model.wsi_sam import WsiSamHead
from napari_wsi_sam.pipeline import batch as batch_module
from napari_wsi_sam.pipeline import segment_prompt
from napari_wsi_sam.prompts import Prompt
from napari_wsi_sam.slide import CropPairCache, open_slide
from napari_wsi_sam.store import ObjectStore
from napari_wsi_sam.ui.coords import box_to_world_corners, slide_to_world
from napari_wsi_sam.ui.layers import (
    FAILED_COLOR,
    HIGHLIGHT,
    POINTS_LAYER,
    PROMPTS_LAYER,
    REGION_LAYER,
    class_layer_name,
    class_layers,
)
from napari_wsi_sam.ui.widget import CLASS_OBJECTS, WsiSamWidget

pytestmark = [pytest.mark.napari, pytest.mark.slow]  # a Qt viewer under Xvfb, the model on CPU

FOLLICLE = np.array([1185.0, 1980.0, 1345.0, 2185.0])
# Five small structures of the CMU slide (level-0 XYXY), near each other.
STRUCTURES = [FOLLICLE, (1000.0, 1900.0, 1060.0, 1960.0), (1380.0, 2000.0, 1440.0, 2060.0),
              (1100.0, 2250.0, 1170.0, 2320.0), (1300.0, 2250.0, 1360.0, 2310.0)]


@pytest.fixture
def slide_copy(sample_slide, tmp_path):
    copy = tmp_path / sample_slide.name
    shutil.copy(sample_slide, copy)
    return copy


def open_annotator(make_napari_viewer, path):
    viewer = make_napari_viewer(show=True)
    viewer.open(str(path), plugin="napari-wsi-sam")
    _, widget = viewer.window.add_plugin_dock_widget("napari-wsi-sam", "WSI-SAM")
    assert isinstance(widget, WsiSamWidget)
    widget.device.value = "cpu"
    return viewer, widget


def draw_box(viewer, box):
    slide_layer = viewer.layers[0]
    prompts = viewer.layers[PROMPTS_LAYER]
    prompts.add_rectangles([box_to_world_corners(np.asarray(box, float), scale=slide_layer.scale)
                            / prompts.scale])


def click(viewer, monkeypatch, xy, *modifiers):
    """A click in the prompts layer at level-0 (x, y): what napari's rectangle tool leaves is
    a rectangle one screen pixel wide; the keyboard modifiers are held meanwhile."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    flags = Qt.KeyboardModifier.NoModifier
    for name in modifiers:
        flags |= getattr(Qt.KeyboardModifier, f"{name}Modifier")
    slide_layer = viewer.layers[0]
    side_world = 1.0 / float(viewer.scene.camera.zoom)  # one screen pixel
    side_px = side_world / slide_layer.scale[-1]
    x, y = xy
    with monkeypatch.context() as patch:
        patch.setattr(QApplication, "keyboardModifiers", staticmethod(lambda: flags))
        draw_box(viewer, (x, y, x + side_px, y + side_px))


def wait_idle(widget, qtbot, timeout=180_000):
    qtbot.waitUntil(lambda: not widget.annotator.busy, timeout=timeout)


def level0(layer, window):
    x0, y0, x1, y1 = window
    return np.asarray(layer.data[0][y0:y1, x0:x1])


def test_draw_select_refine_reclass_delete_undo_reopen(make_napari_viewer, qtbot, slide_copy,
                                                       monkeypatch):
    viewer, widget = open_annotator(make_napari_viewer, slide_copy)
    session = widget.session
    assert session.store.folder == slide_copy.with_name("cmu_small_region.wsi-sam")
    assert widget.status_line.native.wordWrap()  # long messages wrap; the dock stays narrow

    # Drawing a rectangle segments it ("segment as I draw" is on by default).
    draw_box(viewer, FOLLICLE)
    wait_idle(widget, qtbot)
    (first,) = session.store.ids()
    obj = session.store.get(first)
    x0, y0, x1, y1 = obj.bounds
    assert FOLLICLE[0] - 2 <= x0 < x1 <= FOLLICLE[2] + 2
    assert FOLLICLE[1] - 2 <= y0 < y1 <= FOLLICLE[3] + 2
    # ... the default model at the default 10x (the measured rule: SAM there), and exactly
    # the pipeline's own mask for the same prompt.
    default, _ = registry.default_choice(1.0)
    assert widget.models.choice().spec == default.spec == obj.model == "sam"
    with open_slide(slide_copy) as slide:
        own = segment_prompt(slide, Prompt(box=FOLLICLE), build_predictor(
            default, device="cpu"), crop_cache=CropPairCache())
    assert own.window == obj.bounds
    layer = viewer.layers[class_layer_name("other")]
    assert np.array_equal(level0(layer, obj.bounds) == first, own.mask)
    assert layer.contour > 0  # outlines: touching objects stay apart
    # The new object is selected and drawn highlighted.
    assert session.selected == first
    assert list(layer.colormap.color_dict[first]) == pytest.approx(HIGHLIGHT)

    # Alt+click inside it: a negative point, the same object gets a second version.
    centre = ((x0 + x1) / 2, (y0 + y1) / 2 + 0.3 * (y1 - y0))
    click(viewer, monkeypatch, centre, "Alt")
    wait_idle(widget, qtbot)
    assert session.store.ids() == [first] and session.store.get(first).version == 2
    assert session.store.get(first).prompt["labels"] == [0]
    points = viewer.layers[POINTS_LAYER]
    assert len(points.data) == 1 and not points.features["positive"].iloc[0]
    assert len(viewer.layers[PROMPTS_LAYER].data) == 1  # the click left no rectangle
    # Undo goes back to the first mask, not away with the object.
    widget.undo()
    wait_idle(widget, qtbot)
    assert session.store.get(first).version == 1 and len(points.data) == 0
    assert np.array_equal(level0(layer, obj.bounds) == first, own.mask)

    # Click on empty slide: nothing selected; click the object: selected again.
    click(viewer, monkeypatch, (100.0, 100.0))
    assert session.selected is None and "Nothing selected" in widget.status
    click(viewer, monkeypatch, obj.geometry.representative_point().coords[0])
    assert session.selected == first and f"Selected object {first}" in widget.status

    # Re-class the selected object: it moves to the tumour layer.
    widget.class_name.value = "tumour"
    widget.set_class_of_selected()
    wait_idle(widget, qtbot)
    tumour = viewer.layers[class_layer_name("tumour")]
    assert (level0(tumour, obj.bounds) == first).any()
    assert not (level0(layer, obj.bounds) == first).any()
    # Delete it, and bring it back.
    widget.delete_selected()
    wait_idle(widget, qtbot)
    assert session.store.count() == 0 and not (level0(tumour, obj.bounds) == first).any()
    widget.undo()
    wait_idle(widget, qtbot)
    assert session.store.ids() == [first] and session.store.get(first).class_name == "tumour"

    # Reopening the slide restores every object and its class.
    viewer.close()
    _, again = open_annotator(make_napari_viewer, slide_copy)
    assert "1 objects restored" in again.status
    assert again.session.store.get(first).class_name == "tumour"
    assert class_layer_name("tumour") in again._viewer.layers


def test_prompts_drawn_while_busy_are_queued_and_failures_marked(make_napari_viewer, qtbot,
                                                                 slide_copy):
    viewer, widget = open_annotator(make_napari_viewer, slide_copy)
    width, _ = widget.session.slide.dimensions
    for box in (STRUCTURES[1], (width + 100.0, 10.0, width + 300.0, 200.0), STRUCTURES[2]):
        draw_box(viewer, box)  # no waiting: the model is busy with the first
    wait_idle(widget, qtbot)
    assert widget.session.store.count() == 2  # none dropped; the off-slide one failed
    prompts = viewer.layers[PROMPTS_LAYER]
    colors = np.asarray(prompts.edge_color)
    from napari_wsi_sam.store.colors import as_rgba

    failed = [i for i, c in enumerate(colors) if np.allclose(c, as_rgba(FAILED_COLOR))]
    assert failed == [1]


def test_a_box_refines_the_selected_object_when_asked(make_napari_viewer, qtbot, slide_copy):
    viewer, widget = open_annotator(make_napari_viewer, slide_copy)
    draw_box(viewer, FOLLICLE)
    wait_idle(widget, qtbot)
    (first,) = widget.session.store.ids()
    widget.boxes.value = "refines the selected object"
    draw_box(viewer, (1190.0, 1990.0, 1340.0, 2100.0))
    wait_idle(widget, qtbot)
    assert widget.session.store.ids() == [first]
    assert widget.session.store.get(first).version == 2


# Five small structures in two crop groups (tests/test_batch.py): the follicle, a hole in the
# keratin above it, a small vessel, and two dermal papillae further down.
TWO_GROUPS = [FOLLICLE, (1165, 1605, 1295, 1690), (1000, 2475, 1065, 2565),
              (1690, 2535, 1790, 2650), (1595, 2665, 1685, 2840)]


def test_batch_refine_then_cancel_keeps_what_was_done(make_napari_viewer, qtbot, slide_copy,
                                                     monkeypatch):
    # The worker waits after its first stored object until Cancel was pressed: on a fast
    # machine the whole batch could otherwise finish before the UI thread sees that object.
    pressed = threading.Event()
    real_store_result = batch_module.store_result

    def store_then_wait_for_cancel(*args, **kwargs):
        object_id = real_store_result(*args, **kwargs)
        assert pressed.wait(timeout=60), "the test never pressed Cancel"
        return object_id

    monkeypatch.setattr(batch_module, "store_result", store_then_wait_for_cancel)
    viewer, widget = open_annotator(make_napari_viewer, slide_copy)
    scale = viewer.layers[0].scale
    layer = viewer.add_shapes([box_to_world_corners(np.asarray(b, float), scale=scale) / scale
                               for b in TWO_GROUPS], shape_type="rectangle", scale=scale,
                              name="coarse")
    widget.batch_source.value = layer
    widget.batch_refine()
    assert not widget.progress.native.isHidden()  # the bar shows in the dock
    # Cancel once the first object is stored, while the worker holds after it.
    qtbot.waitUntil(lambda: widget.session.store.count() >= 1, timeout=180_000)
    widget.cancel()
    pressed.set()
    wait_idle(widget, qtbot)
    done = widget.session.store.count()
    assert done == 1, done  # the object being stored when Cancel came, and no other
    with ObjectStore.open(widget.session.store.path) as reopened:
        assert reopened.count() == done
    widget.batch_refine(layer)  # again: what was done is skipped, the rest is done
    wait_idle(widget, qtbot)
    assert widget.session.store.count() == len(TWO_GROUPS)
    assert widget.progress.native.isHidden()


# Segment all at the default 10x: the follicle's surroundings (one crop pair, 9 points), and
# that box with a thin arm to the right, two crop pairs wide.
AROUND_FOLLICLE = (1150.0, 1950.0, 1380.0, 2220.0)
FOLLICLE_AND_ARM = [(1150, 1950), (1380, 1950), (1380, 2080), (2210, 2080), (2210, 2110),
                    (1380, 2110), (1380, 2220), (1150, 2220)]


def test_segment_all_in_a_drawn_region_one_undo_and_cancel(make_napari_viewer, qtbot,
                                                           slide_copy):
    viewer, widget = open_annotator(make_napari_viewer, slide_copy)
    session, store = widget.session, widget.session.store
    widget._segment_all_method.value = "grid"
    press = widget._segment_all.native.click
    press()  # no region yet: the region layer comes, ready for a rectangle
    region_layer = viewer.layers[REGION_LAYER]
    assert region_layer.mode == "add_rectangle"
    assert viewer.layers.selection.active is region_layer
    assert "then press Segment all again" in widget.status and not widget.annotator.busy
    scale = viewer.layers[0].scale
    region_layer.add_paths([slide_to_world(np.array([[100.0, 100.0], [300.0, 300.0]]),
                                           scale=scale) / region_layer.scale])
    press()  # a line has no inside: one line in the status, nothing runs
    assert "a path has no inside" in widget.status and not widget.annotator.busy
    region_layer.selected_data = {0}
    region_layer.remove_selected()
    region_layer.add_rectangles(box_to_world_corners(np.asarray(AROUND_FOLLICLE), scale=scale)
                                / region_layer.scale)
    widget.class_name.value = "tumour"
    press()
    assert not widget.progress.native.isHidden()
    wait_idle(widget, qtbot)
    ids = store.ids()
    assert ids and f"{len(ids)} new objects in the region" in widget.status, widget.status
    region = shapely_box(*AROUND_FOLLICLE)
    labels = viewer.layers[class_layer_name("tumour")]
    for obj in map(store.get, ids):
        assert obj.class_name == "tumour" and region.buffer(1).covers(obj.geometry)
        assert (level0(labels, obj.bounds) == obj.id).any()
    widget.undo()  # one undo: the whole run
    wait_idle(widget, qtbot)
    assert store.count() == 0
    assert not any((level0(labels, store.get(i).bounds) == i).any() for i in ids)

    # A polygon two crop pairs wide; Cancel while the first crop runs keeps that crop's
    # objects, as reported, and runs no other.
    corners = slide_to_world(np.asarray(FOLLICLE_AND_ARM, float), scale=scale)
    region_layer.add_polygons([corners / region_layer.scale])
    press()
    qtbot.waitUntil(lambda: len(session.queue) == 0, timeout=30_000)  # the run has begun
    widget.cancel()
    wait_idle(widget, qtbot)
    assert "cancelled after crop 1 of 2" in widget.status, widget.status
    kept = store.ids()
    assert kept and f"the {len(kept)} new objects so far are kept" in widget.status
    polygon = Polygon(FOLLICLE_AND_ARM)
    assert all(polygon.buffer(1).covers(store.get(i).geometry) for i in kept)
    assert widget.progress.native.isHidden()


# Segment all by the instance decoder (the default) runs at its own 40x: one tile around the
# follicle, then a region three tiles wide to cancel in.
DECODER_ONE_TILE = (1150.0, 1950.0, 1450.0, 2250.0)
DECODER_THREE_TILES = (900.0, 1950.0, 2000.0, 2250.0)


def test_segment_all_by_the_decoder_one_undo_and_cancel_keeps_tiles(make_napari_viewer, qtbot,
                                                                    slide_copy):
    viewer, widget = open_annotator(make_napari_viewer, slide_copy)
    session, store = widget.session, widget.session.store
    assert widget._segment_all_method.value == "decoder"
    press = widget._segment_all.native.click
    press()
    region_layer = viewer.layers[REGION_LAYER]
    scale = viewer.layers[0].scale
    region_layer.add_rectangles(box_to_world_corners(np.asarray(DECODER_ONE_TILE), scale=scale)
                                / region_layer.scale)
    widget.class_name.value = "other"
    press()
    wait_idle(widget, qtbot)
    ids = store.ids()
    assert ids and f"{len(ids)} new objects in the region" in widget.status, widget.status
    region = shapely_box(*DECODER_ONE_TILE)
    labels = viewer.layers[class_layer_name("other")]
    for obj in map(store.get, ids):
        assert obj.model == "instance-decoder" and obj.prompt["method"] == "decoder"
        assert obj.prompt["hr_mpp"] == 0.25 and region.buffer(1).covers(obj.geometry)
        assert (level0(labels, obj.bounds) == obj.id).any()
    press()  # again: nothing new, everything found again
    wait_idle(widget, qtbot)
    assert store.ids() == ids and "were there already" in widget.status, widget.status
    widget.undo()
    wait_idle(widget, qtbot)
    assert store.count() == 0
    region_layer.selected_data = set(range(len(region_layer.data)))
    region_layer.remove_selected()
    region_layer.add_rectangles(box_to_world_corners(np.asarray(DECODER_THREE_TILES),
                                                     scale=scale) / region_layer.scale)
    press()
    qtbot.waitUntil(lambda: len(session.queue) == 0, timeout=30_000)
    widget.cancel()
    wait_idle(widget, qtbot)
    assert "cancelled after tile 1 of 3" in widget.status, widget.status
    kept = store.ids()
    assert f"the {len(kept)} new objects so far are kept" in widget.status
    assert widget.progress.native.isHidden()


def test_import_keeps_holes_and_objects_refine_in_place(make_napari_viewer, qtbot, slide_copy,
                                                        tmp_path):
    viewer, widget = open_annotator(make_napari_viewer, slide_copy)
    ring = shapely_box(1100, 1900, 1430, 2250).difference(shapely_box(1200, 2000, 1300, 2100))
    path = tmp_path / "qupath.geojson"
    write_geojson([AnnotationObject(id=1, geometry=ring, class_name="DCIS",
                                    color=(152, 78, 163)),
                   AnnotationObject(id=2, geometry=shapely_box(*STRUCTURES[3]),
                                    class_name="DCIS")], path)
    widget.import_objects(path)
    wait_idle(widget, qtbot)
    store = widget.session.store
    assert store.count() == 2 and store.get(1).geometry.equals(ring)
    assert class_layer_name("DCIS") in viewer.layers
    assert widget.session.classes.color("DCIS") == "#984ea3"
    widget.class_name.value = "DCIS"
    widget.batch_refine(CLASS_OBJECTS)
    wait_idle(widget, qtbot)
    assert store.count() == 2 and {store.get(i).version for i in (1, 2)} == {2}
    # Export: every object, the way QuPath reads it.
    out = widget.export_objects(tmp_path / "out.geojson")
    assert {o.class_name for o in read_geojson(out).objects} == {"DCIS"}
    assert len(read_geojson(out).objects) == 2


def test_two_viewers_on_one_slide_see_each_others_objects(make_napari_viewer, qtbot,
                                                          slide_copy):
    viewer_a, widget_a = open_annotator(make_napari_viewer, slide_copy)
    viewer_b, widget_b = open_annotator(make_napari_viewer, slide_copy)
    draw_box(viewer_b, FOLLICLE)
    wait_idle(widget_b, qtbot)
    (made,) = widget_b.session.store.ids()
    qtbot.waitUntil(lambda: class_layer_name("other") in viewer_a.layers, timeout=30_000)
    wait_idle(widget_a, qtbot)
    bounds = widget_a.session.store.get(made).bounds
    assert (level0(viewer_a.layers[class_layer_name("other")], bounds) == made).any()
    # A's undo does not touch B's object.
    widget_a.undo()
    wait_idle(widget_a, qtbot)
    assert "nothing to undo" in widget_a.status and widget_b.session.store.count() == 1


def test_a_slide_opened_later_goes_below_the_annotations(make_napari_viewer, qtbot,
                                                         slide_copy, asset_path):
    viewer, _ = open_annotator(make_napari_viewer, slide_copy)
    viewer.open(str(asset_path("small.svs")), plugin="napari-wsi-sam")
    names = [layer.name for layer in viewer.layers]
    assert names.index("small.svs") < names.index(PROMPTS_LAYER)


def test_save_a_class_layer_as_geojson_through_napari(make_napari_viewer, qtbot, slide_copy,
                                                      tmp_path):
    viewer, widget = open_annotator(make_napari_viewer, slide_copy)
    widget.live.value = False
    draw_box(viewer, FOLLICLE)
    widget.segment()
    wait_idle(widget, qtbot)
    widget.session.store.add(shapely_box(10, 10, 50, 50), class_name="stroma")
    target = tmp_path / "saved.geojson"
    viewer.layers[class_layer_name("other")].save(str(target), plugin="napari-wsi-sam")
    objects = read_geojson(target).objects
    assert [o.id for o in objects] == widget.session.store.ids(classes=["other"])
    assert objects[0].class_name == "other"


def test_chosen_labels_folder_and_classes_come_back(make_napari_viewer, qtbot, slide_copy,
                                                    tmp_path):
    viewer, widget = open_annotator(make_napari_viewer, slide_copy)
    folder = tmp_path / "my-labels"
    folder.mkdir()
    widget.labels_folder.value = str(folder)
    assert widget.session.store.folder == folder
    widget.new_class.value = "follicle"  # a class of the user's own, in a colour of theirs
    widget.class_color.value = "#00C800"
    draw_box(viewer, FOLLICLE)
    wait_idle(widget, qtbot)
    with ObjectStore.open(folder / "objects.sqlite") as store:
        (record,) = store.iter_live()
        assert record.class_name == "follicle" and store.classes()["follicle"] == "#00c800"
    viewer.close()

    _, again = open_annotator(make_napari_viewer, slide_copy)
    again.labels_folder.value = str(folder)
    assert again.session.classes.color("follicle") == "#00c800"
    assert again.session.store.count() == 1
    assert "follicle" in class_layers(again._viewer)


def test_the_scale_follows_the_head(make_napari_viewer, slide_copy, tmp_path):
    _, widget = open_annotator(make_napari_viewer, slide_copy)
    models = widget.models
    assert models.labels() == [c.label for c in registry.choices()]
    assert "wsi-sam · nuclei · 40x" in models.labels()
    # Until a model is picked, the model follows the measured default of the magnification.
    widget.magnification.value = 0.25
    assert models.choice().label == "wsi-sam · nuclei · 40x · joint"
    assert "hgsc_stromal" in widget.model.tooltip
    widget.magnification.value = 1.0
    assert models.choice().spec == "sam" and "10x" in widget.model.tooltip
    assert widget.session.choice.spec == "sam" and widget.session.hr_mpp == 1.0
    # A head trained at 10x, given by path, joins the list and switches the widget to 10x.
    widget.magnification.value = 0.25
    path = save_head(WsiSamHead(), tmp_path / "tissue.pt", hr_mpp=1.0, structure="tissue")
    widget.head_file.value = str(path)
    assert models.choice().label == "wsi-sam · tissue · 10x" and models.hr_mpp() == 1.0
    assert widget.session.choice.label == "wsi-sam · tissue · 10x"
    # Going to 40x with that head warns in one line naming both scales; the user may go on.
    widget.magnification.value = 0.25
    assert "10x (1.0 µm/px)" in widget.status and "40x (0.25 µm/px)" in widget.status
    assert "\n" not in widget.status and models.choice().label == "wsi-sam · tissue · 10x"
    # Picking the shipped head sets its 40x; picking SAM leaves the scale alone.
    widget.model.value = "wsi-sam:hgsc_nuclei"
    assert models.hr_mpp() == 0.25
    widget.model.value = "sam"
    assert models.hr_mpp() == 0.25


def test_ellipse_shapes_give_elliptic_mask_prompts(make_napari_viewer, slide_copy):
    from napari_wsi_sam.ui.shapes import shapes_to_items

    viewer, _ = open_annotator(make_napari_viewer, slide_copy)
    slide_layer = viewer.layers[0]
    corners = box_to_world_corners(np.array([100.0, 200.0, 300.0, 300.0]),
                                   scale=slide_layer.scale)
    layer = viewer.add_shapes([corners / slide_layer.scale], shape_type="ellipse",
                              scale=slide_layer.scale)
    (item,) = shapes_to_items(layer, slide_layer, with_masks=True)
    assert item.geometry is not None
    assert abs(item.geometry.area - np.pi * 100 * 50) / (np.pi * 100 * 50) < 0.02


@pytest.mark.slow
def test_train_a_head_from_the_objects_while_annotating(make_napari_viewer, qtbot, tmp_path,
                                                        monkeypatch, asset_path):
    """Train head: from the slide's nucleus objects at 40x, measured held out against SAM,
    while a prompt drawn meanwhile is segmented; then Use this head."""
    import tifffile
    from PIL import Image

    from napari_wsi_sam.paths import HOME_ENV
    from napari_wsi_sam.train.datasets import load_data

    monkeypatch.setenv("NAPARI_WSI_SAM_WEIGHTS", str(asset_path("mobile_sam.pt").parent))
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "cache"))  # no installed heads
    (nest,) = load_data("builtin:hgsc_nest")
    pixels = np.asarray(Image.open(nest.image).convert("RGB"))
    slide = tmp_path / "nest.tif"  # the image as a slide: 0.5 µm/px in its resolution tags
    tifffile.imwrite(slide, pixels, resolution=(2e4, 2e4), resolutionunit="CENTIMETER",
                     tile=(256, 256))
    nuclei = tmp_path / "nuclei.geojson"
    # 40 nuclei of one 800² corner: few views to encode, few held-out crops to score
    corner = [i for i, o in enumerate(nest.objects) if max(o.geometry.bounds) < 800]
    order = np.random.default_rng(0).permutation(corner)[:40]
    write_geojson([AnnotationObject(id=int(i) + 1, geometry=nest.objects[i].geometry,
                                    class_name="nucleus") for i in order], nuclei)
    viewer, widget = open_annotator(make_napari_viewer, slide)
    widget.import_objects(nuclei)
    wait_idle(widget, qtbot)
    assert widget.session.store.count() == 40
    widget.magnification.value = 0.25
    panel = widget.training
    panel.classes.reset_choices()
    panel.classes.value = ["nucleus"]
    panel.epochs.value = 1
    panel.start()
    assert panel.busy and not panel.bar.native.isHidden()
    widget.class_name.value = "tumour"
    draw_box(viewer, (600.0, 600.0, 700.0, 700.0))  # annotating goes on meanwhile
    wait_idle(widget, qtbot)
    assert widget.session.store.count() == 41
    qtbot.waitUntil(lambda: not panel.busy, timeout=900_000)
    text = panel.result.value
    assert "held out" in text and "box: head" in text and "points:3: head" in text, text
    assert panel.use_button.enabled
    panel.use()
    choice = widget.models.choice()
    assert choice.head is not None and choice.head.source == "installed"
    assert choice.label == "wsi-sam · nucleus · 40x" and widget.session.choice.spec == choice.spec
    assert choice.head.settings.heldout["hr_mpp"] == 0.25
    assert widget.session.store.count() == 41  # training changed nothing of the store


@pytest.mark.warm_up
def test_opening_a_slide_warms_the_model_up_so_the_first_prompt_loads_nothing(
        make_napari_viewer, qtbot, slide_copy):
    """The widget loads and runs the chosen model in the background when the slide opens (and
    again when another model is picked): the first box then pays one encoder pass, no
    loading, and the predictor it uses is the one warmed up."""
    viewer = make_napari_viewer(show=True)
    viewer.open(str(slide_copy), plugin="napari-wsi-sam")
    _, widget = viewer.window.add_plugin_dock_widget("napari-wsi-sam", "WSI-SAM")
    session = widget.session
    assert widget.warm_worker is not None and widget.warming
    qtbot.waitUntil(lambda: not widget.warming, timeout=120_000)
    warmed = session._predictors[(session.choice.spec, session.device)]
    assert warmed.encoder_calls == 1 and len(warmed.cache) == 0
    assert "mobile_sam" in warmed._parts
    draw_box(viewer, FOLLICLE)
    wait_idle(widget, qtbot)
    assert len(session.store.ids()) == 1
    assert session.predictor() is warmed and warmed.encoder_calls == 2  # the HR crop only

    first = widget.warm_worker
    widget.models.select(registry.parse_choice("wsi-sam", head="hgsc_nuclei"))
    assert widget.warm_worker is not first  # a model picked: warmed up again
    qtbot.waitUntil(lambda: not widget.warming, timeout=120_000)
    assert session.predictor().encoder_calls == 1
