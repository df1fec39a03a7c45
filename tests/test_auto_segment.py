"""Segment all by point grid (`pipeline.auto_grid`, ``segment --auto --method grid``) on real
H&E nuclei with real weights, the instance scores, and the user errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import shapely
from shapely.geometry import box

from napari_wsi_sam.cli import main
from napari_wsi_sam.errors import PromptError
from napari_wsi_sam.evaluation.instances import cut_to, match_instances
from napari_wsi_sam.pipeline.auto_grid import AutoSettings, plan_crops, region_points
from napari_wsi_sam.pipeline.auto_region import Accepted, as_region, fit_region
from napari_wsi_sam.slide import open_slide
from napari_wsi_sam.store import ObjectStore

NEST_MPP = "0.5"
REGION = (300, 900, 396, 996)
"""96x96 px of hgsc_nest at 0.5 µm/px (outside the regions Segment all was tuned on): 36 grid
points at 40x with 32 per side, one crop pair, 7 nuclei."""


@pytest.fixture(scope="module")
def nest(asset_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("nest")
    image = folder / "hgsc_nest.jpg"
    shutil.copy(asset_path("hgsc_nest.jpg"), image)
    return image


# ------------------------------------------------------------------ planning (no model)
def test_every_grid_point_lies_in_the_region_and_near_its_crop_centre(nest):
    region = shapely.Polygon([(100, 100), (900, 100), (100, 900)])
    with open_slide(nest, mpp=0.5) as slide:
        points = region_points(slide, region, hr_mpp=0.25, points_per_side=32)
        plan = plan_crops(slide, region, hr_mpp=0.25, points_per_side=32)
    assert len(points) > 1000
    assert shapely.contains_xy(region, points[:, 0], points[:, 1]).all()
    spacing = np.diff(np.unique(points[:, 0]))
    assert np.allclose(spacing, 16.0)  # 32 HR px at 0.25 µm/px on a 0.5 µm/px image
    planned = np.concatenate([p.points for p in plan])
    assert len(planned) == len(points)
    assert len(np.unique(planned, axis=0)) == len(points)  # each point prompted once
    quarter = 1024 / 4 * 0.25 / 0.5
    for crop in plan:
        assert np.abs(crop.points - crop.center).max() <= quarter + 1e-6


def test_a_region_up_to_half_a_crop_wide_costs_one_crop(nest):
    with open_slide(nest, mpp=0.5) as slide:
        assert len(plan_crops(slide, as_region((300, 300, 556, 556)), hr_mpp=0.25,
                              points_per_side=32)) == 1
        assert len(plan_crops(slide, as_region((300, 300, 560, 556)), hr_mpp=0.25,
                              points_per_side=32)) == 2


def test_regions_and_settings_out_of_range_are_one_line_errors(nest):
    with open_slide(nest, mpp=0.5) as slide:
        with pytest.raises(PromptError, match="outside the 1500x1500 px slide"):
            fit_region(slide, (2000, 2000, 2100, 2100))
        cut = fit_region(slide, (1400, 1400, 1700, 1700))
        assert cut.bounds == (1400, 1400, 1500, 1500)
    with pytest.raises(PromptError, match="empty or inverted"):
        as_region((10, 10, 5, 20))
    with pytest.raises(PromptError, match="4 numbers"):
        as_region((1, 2, 3))
    with pytest.raises(PromptError, match="min score must be between 0 and 1"):
        AutoSettings(min_score=1.5)
    with pytest.raises(PromptError, match="area bounds"):
        AutoSettings(min_area_um2=50, max_area_um2=10)


def test_duplicates_are_judged_by_the_smaller_object():
    accepted = Accepted(0.5)
    accepted.add(box(0, 0, 10, 10), object_id=7)
    assert accepted.duplicates(box(2, 2, 8, 8))  # inside a kept object
    assert accepted.found == {7}
    assert accepted.duplicates(box(4, 0, 14, 10))  # 60 % shared
    assert not accepted.duplicates(box(6, 0, 16, 10))  # 40 % shared
    assert not accepted.duplicates(box(20, 20, 30, 30))


def test_point_suppression_skips_points_inside_objects_already_kept():
    accepted = Accepted(0.3)
    accepted.add(box(0, 0, 10, 10))
    accepted.add(shapely.Polygon([(20, 0), (30, 0), (20, 10)]))
    points = np.array([[5, 5], [15, 5], [22, 2], [28, 8], [100, 100]], float)
    assert accepted.covers(points).tolist() == [True, False, True, False, False]
    assert Accepted(0.3).covers(points).tolist() == [False] * 5


def test_stored_regions_larger_than_a_run_can_make_swallow_nothing(nest, tmp_path):
    from napari_wsi_sam.pipeline.auto_grid import largest_object_px
    from napari_wsi_sam.pipeline.auto_region import stored_in_region
    from napari_wsi_sam.store.files import open_store

    with open_slide(nest, mpp=0.5) as slide, open_store(slide, folder=tmp_path) as store:
        tissue = store.add(box(0, 0, 1400, 1400), class_name="tissue")
        nucleus = store.add(box(500, 500, 520, 516), class_name="nucleus")
        largest = largest_object_px(slide, settings=AutoSettings(), hr_mpp=0.25)
        assert largest == pytest.approx(0.1 * 256 ** 2 / 0.25)
        accepted = stored_in_region(store, box(400, 400, 700, 700), overlap=0.5,
                                    largest=largest)
    assert accepted.ids == [nucleus] and tissue not in accepted.ids
    assert accepted.duplicates(box(502, 502, 518, 514)) and accepted.found == {nucleus}
    assert not accepted.duplicates(box(600, 600, 620, 620))


def test_instance_scores_count_matches_above_iou_one_half():
    truth = [box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10)]
    predicted = [box(0, 0, 10, 9), box(20, 0, 30, 4), box(60, 0, 70, 10)]
    scores = match_instances(predicted, truth)
    assert (scores.true_positives, scores.false_positives, scores.false_negatives) == (1, 2, 2)
    assert scores.f1 == pytest.approx(2 / 6)
    assert scores.matched_iou == pytest.approx(0.9)
    assert scores.pq == pytest.approx(0.9 * 2 / 6)
    assert match_instances([], truth).f1 == 0.0
    assert [g.bounds for g in cut_to(truth, box(5, 0, 25, 10), min_area=20)] == [
        (5.0, 0.0, 10.0, 10.0), (20.0, 0.0, 25.0, 10.0)]


# ------------------------------------------------------------------ the CLI, real model
@pytest.mark.slow
def test_segment_auto_finds_the_nuclei_of_a_region_and_a_rerun_adds_none(nest, tmp_path,
                                                                          capsys):
    from napari_wsi_sam.train.datasets import load_data

    out, labels = tmp_path / "nuclei.geojson", tmp_path / "labels"
    args = ["segment", str(nest), "--auto", "--region", *map(str, REGION), "--mpp", NEST_MPP,
            "--method", "grid", "--head", "hgsc_nuclei", "--class", "nucleus",
            "--device", "cpu", "--points-per-side", "32", "--min-score", "0.8",
            "--min-stability", "0.8",
            "--duplicate-overlap", "0.7",  # the best 32-grid of the first tuning: 4x faster
            "--labels", str(labels), "--out", str(out)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "[crop 1/1]" in captured.err and "new objects" in captured.out
    features = json.loads(out.read_text())["features"]
    found = [shapely.geometry.shape(f["geometry"]) for f in features]
    region = box(*REGION)
    assert found and all(region.buffer(1e-6).covers(g) for g in found)
    assert {f["properties"]["classification"]["name"] for f in features} == {"nucleus"}
    truth = cut_to([o.geometry for o in load_data("builtin:hgsc_nest")[0].objects], region,
                   min_area=16)
    scores = match_instances(found, truth)
    assert scores.f1 >= 0.5 and scores.matched_iou >= 0.6, scores.as_dict()
    with ObjectStore.open(labels / "objects.sqlite") as store:
        first = sorted(o.id for o in store.iter_live())
        assert all(o.model == "wsi-sam" and o.prompt["auto"] for o in store.iter_live())
    # The same command again: every object is found again, none added, the file the same.
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "0 new objects" in captured.out and "already in the store" in captured.err
    assert len(json.loads(out.read_text())["features"]) == len(features)
    with ObjectStore.open(labels / "objects.sqlite") as store:
        assert sorted(o.id for o in store.iter_live()) == first


@pytest.mark.parametrize("extra, message", [
    (["--auto"], "--auto needs --region"),
    (["--box", "0", "0", "10", "10", "--region", "0", "0", "9", "9"],
     "--region apply to --auto only"),
    (["--auto", "--region", "0", "0", "9", "9", "--force"], "--force does not apply to --auto"),
    (["--auto", "--region", "0", "0", "9", "9", "--point", "3", "3"], "--auto places its own"),
    (["--auto", "--region", "0", "0", "9", "9", "--min-score", "2"], "minimum score must lie"),
    (["--auto", "--region", "2000", "2000", "2100", "2100"], "outside the 1500x1500 px slide"),
    (["--auto", "--region", "9", "9", "0", "0"], "empty or inverted"),
    (["--auto", "--region", "0", "0", "9", "9", "--points-per-side", "16"],
     "apply to --method grid only"),
    (["--auto", "--region", "0", "0", "9", "9", "--method", "grid", "--refine"],
     "apply to --method decoder only"),
    (["--auto", "--region", "0", "0", "9", "9", "--decoder", "nonesuch"],
     "unknown instance decoder 'nonesuch'"),
    (["--auto", "--region", "0", "0", "9", "9", "--hr-mpp", "1.0"],
     "no instance decoder works at 10x"),
    (["--box", "0", "0", "10", "10", "--method", "grid"], "apply to --auto only"),
])
def test_segment_auto_user_errors_are_one_line(nest, tmp_path, capsys, extra, message):
    try:
        code = main(["segment", str(nest), *extra, "--mpp", NEST_MPP, "--device", "cpu",
                     "--labels", str(tmp_path / "labels"), "--out", str(tmp_path / "o.geojson")])
    except SystemExit as usage:  # argparse's own range checks
        code = usage.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
