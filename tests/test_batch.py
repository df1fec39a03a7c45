"""Batch refine and the store/GeoJSON helpers on the real CMU slide with the real weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_wsi_sam.annotations import LabelStore, geometry_to_mask, read_geojson
from napari_wsi_sam.annotations.colors import as_rgb
from napari_wsi_sam.cli.demo import SAMPLE_BOX
from napari_wsi_sam.model.predictor import WsiSamPredictor
from napari_wsi_sam.pipeline import (
    BatchItem,
    export_geojson,
    group_by_crop,
    prompts_from_geojson,
    refine_batch,
    segment_prompt,
    store_segmented,
    store_to_objects,
)
from napari_wsi_sam.prompts import Prompt
from napari_wsi_sam.slide import open_slide

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


@pytest.fixture(scope="module")
def batch_store(slide, predictor, tmp_path_factory):
    """The five boxes refined in one batch by a fresh "sam" predictor."""
    fresh_predictor = fresh(predictor)
    store = LabelStore.for_slide(slide, folder=tmp_path_factory.mktemp("batch") / "labels")
    steps = list(refine_batch(slide, items(), fresh_predictor, store=store))
    return store, steps, fresh_predictor.encoder_calls


def test_one_box_goes_into_the_store_and_geojson_with_class_and_area(slide, predictor,
                                                                     tmp_path):
    store = LabelStore.for_slide(slide, folder=tmp_path / "labels")
    prompt = Prompt.from_box(SAMPLE_BOX)
    obj = segment_prompt(slide, prompt, predictor)
    object_id = store_segmented(store, obj, class_name="follicle", color="#ff8000",
                                prompt=prompt)
    record = LabelStore.open(store.folder).objects[object_id]
    assert record.class_name == "follicle" and record.model == "sam"
    assert record.prompt == prompt.to_dict() and record.area == obj.area_px
    mask, window = store.object_mask(object_id)
    assert window == obj.window and np.array_equal(mask, obj.mask)
    out = tmp_path / "one.geojson"
    assert export_geojson(store, out, mpp=slide.mpp) == 1
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
        record = store.objects[step.object_id]
        assert record.class_name == f"s{step.index}"
        bx0, by0, bx1, by1 = BOXES[step.index]
        x0, y0, x1, y1 = record.window
        assert bx0 - 10 <= x0 < x1 <= bx1 + 10 and by0 - 10 <= y0 < y1 <= by1 + 10
        # the same object as one prompt at a time through segment_prompt
        single = segment_prompt(slide, Prompt.from_box(BOXES[step.index]), predictor)
        mask, window = store.object_mask(step.object_id)
        assert window == single.window and iou(mask, single.mask) >= 0.99


def test_wsi_sam_batch_runs_hr_and_lr_encoders_once_per_group(slide, predictor, batch_store,
                                                              tmp_path):
    wsi = fresh(predictor, model="wsi-sam")
    store = LabelStore.for_slide(slide, folder=tmp_path / "labels")
    steps = list(refine_batch(slide, items(), wsi, store=store, model="wsi-sam"))
    assert wsi.encoder_calls == 2 * len(GROUPS)
    sam_store = batch_store[0]
    for step in steps:  # an untrained WSI-SAM head gives SAM's masks
        assert store.objects[step.object_id].model == "wsi-sam"
        np.testing.assert_array_equal(store.object_mask(step.object_id)[0],
                                      sam_store.object_mask(step.object_id)[0])


def test_cancel_after_two_keeps_exactly_those_two(slide, predictor, tmp_path):
    store = LabelStore.for_slide(slide, folder=tmp_path / "labels")
    batch = refine_batch(slide, items(), predictor, store=store)
    done = [next(batch), next(batch)]
    batch.close()
    reopened = LabelStore.open(store.folder)
    assert sorted(reopened.objects) == sorted(s.object_id for s in done)
    assert not (store.folder / "pending.json").exists()
    for step in done:
        mask, _ = reopened.object_mask(step.object_id)
        assert mask.sum() == reopened.objects[step.object_id].area


def test_an_off_slide_item_reports_an_error_and_the_rest_proceed(slide, predictor, tmp_path):
    width = slide.dimensions[0]
    batch_items = items()[3:]
    batch_items.insert(1, BatchItem(prompt=Prompt.from_box((width + 50, 10, width + 90, 60)),
                                    source="stray"))
    store = LabelStore.for_slide(slide, folder=tmp_path / "labels")
    steps = list(refine_batch(slide, batch_items, predictor, store=store))
    assert len(steps) == 3 and [s.done for s in steps] == [1, 2, 3]
    failed = [s for s in steps if s.error is not None]
    assert len(failed) == 1 and failed[0].index == 1 and failed[0].object_id is None
    assert "item 1 (stray)" in failed[0].error and "outside" in failed[0].error
    assert "\n" not in failed[0].error
    assert len(store.objects) == 2


def test_geojson_export_import_rasterise_matches_the_store(batch_store, tmp_path):
    store = batch_store[0]
    out = tmp_path / "all.geojson"
    assert export_geojson(store, out, mpp=store.mpp) == 5
    result = read_geojson(out)
    assert result.skipped == [] and len(result.objects) == 5
    for obj in result.objects:
        mask, window = store.object_mask(obj.id)
        back, _ = geometry_to_mask(obj.geometry, window)
        assert iou(mask, back) >= 0.99
        assert obj.class_name == store.objects[obj.id].class_name and obj.model == "sam"
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
    batch_items, skipped = prompts_from_geojson(path)
    assert len(batch_items) == 2 and len(skipped) == 1 and "Point" in skipped[0]
    assert batch_items[0].class_name == "follicle" and batch_items[0].color == (0, 200, 0)
    assert np.allclose(batch_items[0].prompt.box, [1180, 1975, 1350, 2190])
    assert batch_items[0].mask is not None and batch_items[0].mask[0].any()
    store = LabelStore.for_slide(slide, folder=tmp_path / "labels")
    steps = list(refine_batch(slide, batch_items, predictor, store=store,
                              use_mask_prompts=True, default_class="papilla"))
    assert all(s.object_id is not None for s in steps)
    classes = sorted(r.class_name for r in store.objects.values())
    assert classes == ["follicle", "papilla"]


def test_colours_become_rgb():
    assert as_rgb("#ff8000") == (255, 128, 0)
    assert as_rgb((1.0, 0.5, 0.0)) == (255, 128, 0)
    assert as_rgb((255, 255, 0)) == (255, 255, 0)
    assert as_rgb("yellowish") is None
