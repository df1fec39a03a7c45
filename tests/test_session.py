"""The Qt-free annotation session on the real CMU slide with the real weights: requests in
order, selection, refinement as versions, undo, classes, import, batch, Segment all, export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from shapely.geometry import box, shape

from napari_wsi_sam.model import registry
from napari_wsi_sam.pipeline import items_from_store
from napari_wsi_sam.pipeline.auto_grid import AutoSettings
from napari_wsi_sam.session import (
    AnnotationSession,
    BatchRequest,
    BoxRequest,
    DeleteRequest,
    ImportRequest,
    PointRequest,
    ReclassRequest,
    SegmentAllRequest,
    SyncRequest,
    UndoRequest,
)
from napari_wsi_sam.store import ObjectStore

pytestmark = pytest.mark.slow  # the real model on CPU

FOLLICLE = np.array([1185.0, 1980.0, 1345.0, 2185.0])
REGION = np.array([1000.0, 1800.0, 1500.0, 2300.0])


@pytest.fixture
def session(sample_slide, tmp_path):
    copy = tmp_path / sample_slide.name
    shutil.copy(sample_slide, copy)
    opened = AnnotationSession.open(copy, device="cpu")
    yield opened
    opened.close()


def only(outcomes):
    (outcome,) = outcomes
    assert not outcome.error, outcome.message
    return outcome


def test_requests_run_in_order_and_a_click_refines_the_new_object(session):
    assert session.choice.model == "sam" and session.hr_mpp == 1.0  # the 10x default
    session.current_class = "follicle"
    session.submit(BoxRequest(FOLLICLE, tag="first box"))
    session.submit(PointRequest(1250.5, 2150.5, positive=False))  # queued behind the box
    session.submit(ReclassRequest((1,), "hair follicle"))
    outcomes = list(session.drain())
    assert [o.error for o in outcomes] == [False] * 3, [o.message for o in outcomes]
    assert outcomes[0].request.tag == "first box" and outcomes[0].object_id == 1
    assert "predicted IoU" in outcomes[0].message and outcomes[0].touched == ("follicle",)
    obj = session.store.get(1)
    assert (obj.version, obj.class_name) == (3, "hair follicle")
    assert obj.prompt["labels"] == [0] and obj.prompt["box"] == FOLLICLE.tolist()
    assert session.store.count() == 1 and session.selected == 1
    # Undo walks back: the class, then the click's mask (not the whole object).
    only(session.run_now(UndoRequest()))
    only(session.run_now(UndoRequest()))
    first = session.store.get(1)
    assert first.version == 1 and first.prompt["labels"] == []
    assert session.refine_points()[0].shape == (0, 2)
    only(session.run_now(UndoRequest(redo=True)))
    assert session.store.get(1).version == 2


def test_selection_walks_out_of_nested_objects(session):
    region = session.store.add(box(*REGION), class_name="tumour")  # drawn by hand, say
    session.current_class = "follicle"
    follicle = only(session.run_now(BoxRequest(FOLLICLE))).object_id
    inside = session.store.get(follicle)
    assert inside.parent == region  # SAM's follicle lies wholly in the region
    x, y = inside.geometry.representative_point().coords[0]
    assert session.selected == follicle  # a new object is selected
    assert session.select_at(x, y).id == region  # clicking it walks out to its container
    session.select(None)
    assert session.select_at(x, y).id == follicle  # from nothing: the smallest first
    assert session.select_at(x, y).id == region  # again: the one that contains it
    assert session.select_at(x, y).id == follicle
    assert session.select_at(5.5, 5.5) is None and session.selected is None


def test_a_failed_prompt_is_one_line_and_changes_nothing(session):
    width, _ = session.slide.dimensions
    (outcome,) = session.run_now(BoxRequest(np.array([width + 10.0, 5, width + 90, 60])))
    assert outcome.error and "outside" in outcome.message and "\n" not in outcome.message
    (outcome,) = session.run_now(PointRequest(100.5, 100.5))  # nothing selected: a new object
    assert session.store.count() <= 1
    (outcome,) = session.run_now(DeleteRequest((99,)))
    assert outcome.error and "no object 99" in outcome.message


def test_cancel_drops_what_waits(session):
    session.submit(BoxRequest(FOLLICLE))
    session.submit(BoxRequest(REGION))
    dropped = session.cancel()
    assert len(dropped) == 2 and list(session.drain()) == []
    session.submit(BoxRequest(FOLLICLE))  # a new request runs again
    assert len(list(session.drain())) == 1


def test_cancel_stops_a_batch_after_the_current_object(session):
    from napari_wsi_sam.pipeline import BatchItem
    from napari_wsi_sam.prompts import Prompt

    items = tuple(BatchItem(prompt=Prompt.from_box(FOLLICLE + np.array([i, 0, i, 0])))
                  for i in range(4))
    run = session.run(BatchRequest(items))
    first = next(run)
    assert first.progress == (1, 4) and session.store.count() == 1
    session.cancel()
    (note,) = list(run)  # nothing more runs; what was done stays
    assert "cancelled after 1 of 4" in note.message and session.store.count() == 1


def test_a_request_queued_after_a_cancel_runs_and_does_not_revive_the_batch(session):
    """The viewer's poll queues a redraw whenever the worker writes; a Cancel pressed just
    before that redraw was queued must still stop the batch (it used to be forgotten)."""
    from napari_wsi_sam.pipeline import BatchItem
    from napari_wsi_sam.prompts import Prompt

    items = tuple(BatchItem(prompt=Prompt.from_box(FOLLICLE + np.array([i, 0, i, 0])))
                  for i in range(4))
    session.submit(BatchRequest(items))
    worker = session.drain()
    assert next(worker).progress == (1, 4)
    session.cancel()
    session.submit(SyncRequest())  # what the poll asks for after the batch's first write
    rest = [o.message for o in worker]
    assert len(rest) == 2 and "cancelled after 1 of 4" in rest[0], rest
    assert "updated from changes made elsewhere" in rest[1] and session.store.count() == 1


def test_segment_all_stores_a_region_once_and_one_undo_removes_the_run(session):
    width, _ = session.slide.dimensions
    (off,) = session.run_now(SegmentAllRequest(box(width + 10, 5, width + 90, 60)))
    assert off.error and "outside" in off.message and "\n" not in off.message
    session.set_model(registry.parse_choice("sam"))
    session.set_hr_mpp(0.25, follow_default=False)  # SAM at 40x: nuclei
    session.current_class = "nucleus"  # not stored yet: the run stores it first
    region = box(1090, 760, 1170, 840)  # 40 µm of epidermis: one crop pair, 25 points
    sparse = AutoSettings(points_per_side=32, min_score=0.8, min_stability=0.8,
                          duplicate_overlap=0.7)  # a quarter of the default's points
    outcomes = session.run_now(SegmentAllRequest(region, sparse))
    assert [o.error for o in outcomes] == [False, False], [o.message for o in outcomes]
    assert [o.progress for o in outcomes] == [(1, 1), (1, 1)]
    assert outcomes[0].touched == ("nucleus",)
    ids = session.store.ids()
    assert len(ids) >= 2 and f"{len(ids)} new objects in the region" in outcomes[-1].message
    assert "Undo removes them all" in outcomes[-1].message
    for obj in map(session.store.get, ids):
        assert obj.class_name == "nucleus" and obj.model == "sam" and obj.prompt["auto"]
        assert obj.prompt["hr_mpp"] == 0.25 and region.buffer(1).covers(obj.geometry)
    assert session.store.classes()["nucleus"] == session.classes.color("nucleus")
    # A rerun repeats nothing: it finds the run's objects again.
    again = session.run_now(SegmentAllRequest(region, sparse))
    assert session.store.ids() == ids
    assert f"no new objects in the region ({len(ids)} were there already)" in again[-1].message
    only(session.run_now(UndoRequest()))  # the whole run in one step
    assert session.store.count() == 0


def test_import_keeps_holes_and_parts_then_refines_in_place(session, tmp_path):
    ring = [[1100, 1900], [1430, 1900], [1430, 2250], [1100, 2250], [1100, 1900]]
    hole = [[1200, 2000], [1300, 2000], [1300, 2100], [1200, 2100], [1200, 2000]]
    far = [[1690, 2535], [1790, 2535], [1790, 2650], [1690, 2650], [1690, 2535]]
    path = tmp_path / "coarse.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "MultiPolygon",
                                         "coordinates": [[ring, hole], [far]]},
         "properties": {"classification": {"name": "DCIS", "color": [152, 78, 163]}}}]}))
    outcome = only(session.run_now(ImportRequest(path)))
    assert "1 objects imported" in outcome.message
    (imported,) = session.store.iter_live()
    assert imported.class_name == "DCIS" and imported.model == "imported"
    assert imported.geometry.equals(shape({"type": "MultiPolygon",
                                           "coordinates": [[ring, hole], [far]]}))
    assert session.store.classes()["DCIS"] == "#984ea3"
    items = items_from_store(session.store, [imported.id])
    outcomes = session.run_now(BatchRequest(tuple(items), use_mask_prompts=True))
    assert [o.progress for o in outcomes] == [(1, 1)]
    refined = session.store.get(imported.id)
    assert refined.version == 2 and session.store.count() == 1
    assert refined.model == "sam" and refined.class_name == "DCIS"
    only(session.run_now(UndoRequest()))  # the whole batch in one step
    assert session.store.get(imported.id).geometry.equals(imported.geometry)


def test_export_writes_every_live_object(session, tmp_path):
    session.current_class = "tumour"
    only(session.run_now(BoxRequest(REGION)))
    session.current_class = "follicle"
    only(session.run_now(BoxRequest(FOLLICLE)))
    session.store.add(box(10, 10, 40, 40), class_name="stroma")
    out = tmp_path / "objects.geojson"
    assert session.export_objects(out) == 3
    features = json.loads(out.read_text())["features"]
    names = sorted(f["properties"]["classification"]["name"] for f in features)
    assert names == ["follicle", "stroma", "tumour"]
    with ObjectStore.open(session.store.path) as again:
        assert again.count() == 3


def test_the_scale_follows_a_chosen_head(session):
    from napari_wsi_sam.model import registry

    note = session.set_model(registry.parse_choice("wsi-sam"))
    assert session.hr_mpp == 0.25 and "40x" in note
    warning = session.set_hr_mpp(1.0, follow_default=False)
    assert "40x (0.25 µm/px)" in warning and session.choice.model == "wsi-sam"
    assert session.set_hr_mpp(1.0, follow_default=True) is None
    assert session.choice.model == "sam"
