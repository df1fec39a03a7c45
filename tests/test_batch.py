"""Batch refine and the store/GeoJSON helpers on the real CMU slide with the real weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely

from napari_wsi_sam.cli.demo import SAMPLE_BOX
from napari_wsi_sam.formats import read_geojson
from napari_wsi_sam.model.predictor import WsiSamPredictor
from napari_wsi_sam.pipeline import (
    BatchItem,
    Provenance,
    export_objects,
    group_by_crop,
    items_from_geojson,
    refine_batch,
    segment_prompt,
    store_segmented,
    store_to_objects,
)
from napari_wsi_sam.polygons import geometry_to_mask
from napari_wsi_sam.prompts import Prompt
from napari_wsi_sam.slide import open_slide
from napari_wsi_sam.store import ObjectStore, open_store
from napari_wsi_sam.store.colors import as_rgb

pytestmark = pytest.mark.slow  # the real model on CPU

# Five small structures of the CMU slide (level-0 px, XYXY): the follicle, a hole in the
# keratin above it, a small vessel below-left, and two dermal papillae in the epidermis at the
# bottom right. The first three snap to one crop node, the papillae to another.
BOXES = [SAMPLE_BOX, (1165, 1605, 1295, 1690), (1000, 2475, 1065, 2565),
         (1690, 2535, 1790, 2650), (1595, 2665, 1685, 2840)]
GROUPS = [[0, 1, 2], [3, 4]]


@pytest.fixture(scope="module")
def predictor():
    return WsiSamPredictor(model="sam", device="cpu")


def fresh(predictor, model="sam"):
    """A predictor with an empty embedding cache, sharing the loaded weights."""
    return WsiSamPredictor(model=model, device="cpu",
                           parts={"mobile_sam": predictor.parts("mobile_sam")})


@pytest.fixture(scope="module")
def slide(sample_slide):
    with open_slide(sample_slide) as opened:
        yield opened


def items():
    return [BatchItem(prompt=Prompt.from_box(b), class_name=f"s{i}", source=f"box {i}")
            for i, b in enumerate(BOXES)]


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def object_mask(store, object_id):
    """(mask, window) of a stored object at its own pixel bounds."""
    obj = store.get(object_id)
    return geometry_to_mask(obj.geometry, obj.bounds)


@pytest.fixture(scope="module")
def batch_store(slide, predictor, tmp_path_factory):
    """The five boxes refined in one batch by a fresh "sam" predictor."""
    fresh_predictor = fresh(predictor)
    store = open_store(slide, folder=tmp_path_factory.mktemp("batch") / "labels")
    steps = list(refine_batch(slide, items(), fresh_predictor, store=store))
    return store, steps, fresh_predictor.encoder_calls


def test_one_box_goes_into_the_store_and_geojson_with_class_and_area(slide, predictor,
                                                                     tmp_path):
    store = open_store(slide, folder=tmp_path / "labels")
    store.set_class("follicle", "#ff8000")
    prompt = Prompt.from_box(SAMPLE_BOX)
    obj = segment_prompt(slide, prompt, predictor)
    object_id = store_segmented(store, obj, class_name="follicle",
                                provenance=Provenance("sam"))
    record = ObjectStore.open(store.path).get(object_id)
    assert record.class_name == "follicle" and record.model == "sam"
    assert record.prompt == {**prompt.to_dict(), "hr_mpp": 1.0}
    assert record.area == obj.area_px
    mask, window = object_mask(store, object_id)
    assert window == obj.window and np.array_equal(mask, obj.mask)
    out = tmp_path / "one.geojson"
    assert export_objects(store, out, mpp=slide.mpp) == 1
    feature = json.loads(out.read_text())["features"][0]
    props = feature["properties"]
    assert props["classification"] == {"name": "follicle", "color": [255, 128, 0]}
    assert props["model"] == "sam" and props["score"] == pytest.approx(obj.score)
    assert props["measurements"]["Area µm^2"] == pytest.approx(obj.area_um2(slide.mpp))


def test_a_negative_point_changes_the_mask(slide, predictor):
    box = Prompt.from_box(SAMPLE_BOX)
    plain = segment_prompt(slide, box, predictor)
    # A negative click in the follicle's lower part, on its outer sheath.
    x, y = 1250, 2150
    negative = Prompt(box=box.box, points=[[x + 0.5, y + 0.5]], labels=[0])
    refined = segment_prompt(slide, negative, predictor)
    assert refined.area_px < 0.97 * plain.area_px
    assert plain.mask[y - plain.window[1], x - plain.window[0]]
    assert refined.window[3] < plain.window[3]  # the object gives way at its lower end


def test_batch_groups_by_crop_and_runs_the_encoder_once_per_group(slide, predictor,
                                                                  batch_store):
    groups, errors = group_by_crop(slide, items())
    assert [g.indices for g in groups] == GROUPS and errors == {}
    assert all(g.center is not None for g in groups)
    store, steps, calls = batch_store
    assert calls == len(GROUPS)  # "sam": one HR encoder pass per group
    assert [s.done for s in steps] == [1, 2, 3, 4, 5] and all(s.total == 5 for s in steps)
    assert all(s.error is None and s.object_id is not None for s in steps)
    assert steps[-1].seconds_left == 0
    assert [s.index for s in steps] == [0, 1, 2, 3, 4]
    for step in steps:
        record = store.get(step.object_id)
        assert record.class_name == f"s{step.index}"
        bx0, by0, bx1, by1 = BOXES[step.index]
        x0, y0, x1, y1 = record.bounds
        assert bx0 - 10 <= x0 < x1 <= bx1 + 10 and by0 - 10 <= y0 < y1 <= by1 + 10
        # the same object as one prompt at a time through segment_prompt
        single = segment_prompt(slide, Prompt.from_box(BOXES[step.index]), predictor)
        mask, window = object_mask(store, step.object_id)
        assert window == single.window and iou(mask, single.mask) >= 0.99


def test_wsi_sam_batch_runs_hr_and_lr_encoders_once_per_group(slide, predictor, batch_store,
                                                              tmp_path):
    wsi = fresh(predictor, model="wsi-sam")
    store = open_store(slide, folder=tmp_path / "labels")
    steps = list(refine_batch(slide, items(), wsi, store=store))
    assert wsi.encoder_calls == 2 * len(GROUPS)
    sam_store = batch_store[0]
    for step in steps:  # an untrained WSI-SAM head gives SAM's masks
        assert store.get(step.object_id).model == "wsi-sam"
        np.testing.assert_array_equal(object_mask(store, step.object_id)[0],
                                      object_mask(sam_store, step.object_id)[0])


def test_cancel_after_two_keeps_exactly_those_two(slide, predictor, tmp_path):
    store = open_store(slide, folder=tmp_path / "labels")
    batch = refine_batch(slide, items(), predictor, store=store)
    done = [next(batch), next(batch)]
    batch.close()
    reopened = ObjectStore.open(store.path)
    assert sorted(reopened.ids()) == sorted(s.object_id for s in done)
    for step in done:
        mask, _ = object_mask(reopened, step.object_id)
        assert mask.sum() == reopened.get(step.object_id).area
    # A rerun skips what was done (resume keys) and does the rest: no duplicates.
    steps = list(refine_batch(slide, items(), predictor, store=store))
    assert sum(s.skipped for s in steps) == 2 and store.count() == len(BOXES)
    assert {s.object_id for s in steps if s.skipped} == {s.object_id for s in done}
    # --force redoes every one of them as a new version, still no duplicates.
    steps = list(refine_batch(slide, items(), predictor, store=store, force=True))
    assert store.count() == len(BOXES)
    assert {store.get(s.object_id).version for s in steps} == {2}


def test_an_off_slide_item_reports_an_error_and_the_rest_proceed(slide, predictor, tmp_path):
    width = slide.dimensions[0]
    batch_items = items()[3:]
    batch_items.insert(1, BatchItem(prompt=Prompt.from_box((width + 50, 10, width + 90, 60)),
                                    source="stray"))
    store = open_store(slide, folder=tmp_path / "labels")
    steps = list(refine_batch(slide, batch_items, predictor, store=store))
    assert len(steps) == 3 and [s.done for s in steps] == [1, 2, 3]
    failed = [s for s in steps if s.error is not None]
    assert len(failed) == 1 and failed[0].index == 1 and failed[0].object_id is None
    assert "item 1 (stray)" in failed[0].error and "outside" in failed[0].error
    assert "\n" not in failed[0].error
    assert store.count() == 2


def test_geojson_export_import_rasterise_matches_the_store(batch_store, tmp_path):
    store = batch_store[0]
    out = tmp_path / "all.geojson"
    assert export_objects(store, out, mpp=store.mpp) == 5
    result = read_geojson(out)
    assert result.skipped == [] and len(result.objects) == 5
    for obj in result.objects:
        mask, window = object_mask(store, obj.id)
        back, _ = geometry_to_mask(obj.geometry, window)
        assert np.array_equal(mask, back)  # the store's exact outline, not a traced raster
        assert obj.class_name == store.get(obj.id).class_name and obj.model == "sam"
    assert [o.id for o in store_to_objects(store, ids={2, 4})] == [2, 4]


def test_polygons_from_geojson_refine_with_mask_prompts(slide, predictor, tmp_path):
    # A coarse diamond around the follicle, a classless square, and a point (skipped).
    diamond = [[1265, 1975], [1350, 2082], [1265, 2190], [1180, 2082], [1265, 1975]]
    square = [[1690, 2535], [1790, 2535], [1790, 2650], [1690, 2650], [1690, 2535]]
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [diamond]},
         "properties": {"classification": {"name": "follicle", "color": [0, 200, 0]}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]},
         "properties": {}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
         "properties": {}},
    ]
    path = tmp_path / "coarse.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    batch_items, skipped = items_from_geojson(path)
    assert len(batch_items) == 2 and len(skipped) == 1 and "Point" in skipped[0]
    assert batch_items[0].class_name == "follicle" and batch_items[0].color == (0, 200, 0)
    assert np.allclose(batch_items[0].prompt.box, [1180, 1975, 1350, 2190])
    assert batch_items[0].geometry is not None and batch_items[0].geometry.area > 0
    store = open_store(slide, folder=tmp_path / "labels")
    steps = list(refine_batch(slide, batch_items, predictor, store=store,
                              use_mask_prompts=True, default_class="papilla"))
    assert all(s.object_id is not None for s in steps)
    classes = sorted(o.class_name for o in store.iter_live())
    assert classes == ["follicle", "papilla"]


def test_a_multipolygon_with_a_hole_is_one_item_with_its_whole_mask(tmp_path):
    ring = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]
    hole = [[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]]
    other = [[200, 0], [250, 0], [250, 50], [200, 50], [200, 0]]
    path = tmp_path / "multi.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": {
        "type": "MultiPolygon", "coordinates": [[ring, hole], [other]]}}))
    (item,), skipped = items_from_geojson(path)
    assert skipped == [] and item.geometry is not None
    assert item.geometry.bounds == (0, 0, 250, 100)
    assert item.geometry.area == 100 * 100 - 20 * 20 + 50 * 50
    assert not item.geometry.contains(shapely.Point(50, 50))
    assert np.allclose(item.prompt.box, [0, 0, 250, 100])


def test_a_big_crop_group_runs_in_bounded_decoder_batches(slide, predictor, tmp_path):
    """Prompts go to the decoder a few at a time and each object is stored when done."""
    store = open_store(slide, folder=tmp_path / "labels")
    many = [BatchItem(prompt=Prompt.from_box((1185 + i, 1980, 1345 + i, 2185)))
            for i in range(7)]
    calls = []
    original = predictor.predict

    def counting(*args, **kwargs):
        calls.append(len(kwargs["boxes"]))
        return original(*args, **kwargs)

    predictor.predict = counting
    try:
        stored = []
        for _step in refine_batch(slide, many, predictor, store=store, decoder_batch=3):
            stored.append(store.count())
    finally:
        del predictor.predict
    assert calls == [3, 3, 1] and stored == [1, 2, 3, 4, 5, 6, 7]


def test_colours_become_rgb():
    assert as_rgb("#ff8000") == (255, 128, 0)
    assert as_rgb((1.0, 0.5, 0.0)) == (255, 128, 0)
    assert as_rgb((255, 255, 0)) == (255, 255, 0)
    assert as_rgb("yellowish") is None
