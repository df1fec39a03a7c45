"""The instance decoder (Segment all's default method): its targets, watershed, file format,
registry, tiling with stitching across crop borders, the CLI, and training with held-out
proof; on real H&E nuclei (hgsc_nest) with real MobileSAM weights and the shipped decoder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import shapely
import torch
from scipy import ndimage
from shapely.geometry import box

from napari_wsi_sam.cli import main
from napari_wsi_sam.errors import PromptError, WeightsError
from napari_wsi_sam.evaluation.instances import cut_to, match_instances
from napari_wsi_sam.model.instance_checkpoint import (
    InstanceDecoderSettings,
    load_instance_decoder,
    save_instance_decoder,
)
from napari_wsi_sam.model.instance_decoder import InstanceDecoder, InstanceDecoderConfig
from napari_wsi_sam.model.instance_model import InstanceModel
from napari_wsi_sam.model.instance_registry import (
    default_instance_decoder,
    find_instance_decoder,
    instance_decoders,
)
from napari_wsi_sam.model.instance_watershed import WatershedSettings, instances_from_maps
from napari_wsi_sam.pipeline.auto_decoder import plan_tiles
from napari_wsi_sam.slide import open_slide
from napari_wsi_sam.slide.tissue import TissueMask
from napari_wsi_sam.store import ObjectStore
from napari_wsi_sam.train.datasets import load_data
from napari_wsi_sam.train.instance_targets import (
    WEIGHT_RING_PX,
    instance_maps,
    view_labels,
    view_targets,
)
from napari_wsi_sam.train.sampler import CropView

NEST_MPP = "0.5"


@pytest.fixture(scope="module")
def nest(asset_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("nest")
    image = folder / "hgsc_nest.jpg"
    shutil.copy(asset_path("hgsc_nest.jpg"), image)
    return image


def _discs(centres, radius, size=96):
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    for k, (cx, cy) in enumerate(centres, start=1):
        labels[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2] = k
    return labels


# ------------------------------------------------------------------ targets and watershed
def test_targets_are_zero_at_each_centre_and_one_at_each_rim_and_on_background():
    labels = _discs([(30, 30), (70, 60)], 10)
    fg, centre, boundary = instance_maps(labels)
    assert fg.sum() == (labels > 0).sum()
    for cx, cy in ((30, 30), (70, 60)):
        assert centre[cy, cx] < 0.1 and boundary[cy, cx] < 0.15
        assert centre[cy, cx + 10] > 0.9 and boundary[cy, cx + 10] == pytest.approx(1.0)
    assert (centre[labels == 0] == 1).all() and (boundary[labels == 0] == 1).all()


def test_the_watershed_splits_two_touching_nuclei_and_keeps_their_pixels():
    labels = _discs([(40, 48), (58, 48)], 10)  # overlapping discs: one blob, two centres
    labels[(labels == 0) & (_discs([(58, 48)], 10) > 0)] = 2
    maps = instance_maps(labels)
    found = instances_from_maps(maps, WatershedSettings(0.5, 0.5, 0.5, 4))
    assert found.max() == 2
    assert ((found > 0) == (labels > 0)).all()
    for k in (1, 2):
        best = max(np.logical_and(found == j, labels == k).sum() / np.logical_or(
            found == j, labels == k).sum() for j in (1, 2))
        assert best > 0.85
    assert instances_from_maps(np.stack([np.zeros((8, 8))] + [np.ones((8, 8))] * 2)).max() == 0


def test_a_seedless_blob_is_lost_unless_unseeded_keeps_it():
    labels = _discs([(30, 30), (70, 60)], 10)
    maps = instance_maps(labels)
    maps[1][labels == 2] = 0.9  # the second nucleus' centre never gets confident
    plain = instances_from_maps(maps, WatershedSettings(0.5, 0.5, 0.5, 4))
    kept = instances_from_maps(maps, WatershedSettings(0.5, 0.5, 0.5, 4, unseeded=True))
    assert plain.max() == 1 and (plain[labels == 2] == 0).all()
    assert kept.max() == 2 and ((kept > 0) == (labels > 0)).all()
    assert WatershedSettings.from_dict({"foreground": 0.6}).unseeded is False


def test_a_transposed_view_has_the_transposed_targets_and_classes_weigh_as_asked(nest):
    objects = load_data("builtin:hgsc_nest")[0].objects
    with open_slide(nest, mpp=0.5) as slide:
        plain = CropView(0, (1400.0, 700.0), 0.25, 2.0, True, False)
        turned = CropView(0, (1400.0, 700.0), 0.25, 2.0, True, False, transpose=True)
        assert plain.token("x") != turned.token("x")
        a = view_targets(plain, slide, objects, size=512)
        b = view_targets(turned, slide, objects, size=512,
                         class_weights={"connective": 3.0})
        np.testing.assert_array_equal(view_labels(turned, slide, objects, size=512),
                                      view_labels(plain, slide, objects, size=512).T)
    assert not a.valid.all()  # the view runs off the image's right edge (x 1500)
    np.testing.assert_array_equal(b.valid, a.valid.T)
    np.testing.assert_allclose(b.maps, a.maps.transpose(0, 2, 1))
    labels = view_labels(turned, slide, objects, size=512)
    connective = [k for k, o in enumerate(objects, start=1) if o.class_name == "connective"]
    on = np.isin(labels, connective) & b.valid
    assert on.any() and (b.weight[on] == 3.0).all()
    far = ~ndimage.binary_dilation(np.isin(labels, connective), np.ones((3, 3), bool),
                                   iterations=WEIGHT_RING_PX + 1) & b.valid
    assert (b.weight[far] == 1.0).all() and (b.weight[~b.valid] == 0).all()
    assert (a.weight == a.valid).all()


def test_watershed_settings_out_of_range_are_refused():
    with pytest.raises(ValueError, match="between 0 and 1"):
        WatershedSettings(foreground=1.5)


# ------------------------------------------------------------------ the file and the registry
def test_a_decoder_file_round_trips_and_a_pickle_is_refused_in_one_line(tmp_path):
    decoder = InstanceDecoder(InstanceDecoderConfig(widths=(16, 8, 8, 8)))
    path = save_instance_decoder(decoder, tmp_path / "d.pt", settings=InstanceDecoderSettings(
        hr_mpp=0.5, name="mine", heldout={"pq": 0.4}))
    loaded = load_instance_decoder(path)
    assert loaded.settings.hr_mpp == 0.5 and loaded.settings.name == "mine"
    assert loaded.decoder.config.widths == (16, 8, 8, 8)
    for a, b in zip(decoder.state_dict().values(), loaded.decoder.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "napari-wsi-sam-instance-decoder", "x": object()}, evil)
    with pytest.raises(WeightsError, match="holds Python objects, which are never loaded"):
        load_instance_decoder(evil)
    other = tmp_path / "other.pt"
    torch.save({"format": "something"}, other)
    with pytest.raises(WeightsError, match="not a napari-wsi-sam instance decoder"):
        load_instance_decoder(other)


def test_the_shipped_decoder_is_listed_with_its_scale_and_held_out_result(capsys):
    shipped = [e for e in instance_decoders() if e.source == "shipped"]
    assert [e.name for e in shipped] == ["hgsc_nuclei_instances"]
    entry = shipped[0]
    assert entry.hr_mpp == 0.25 and entry.heldout is not None and entry.heldout["pq"] > 0.4
    assert default_instance_decoder(0.25).name == entry.name
    assert default_instance_decoder(1.0) is None
    assert find_instance_decoder(str(entry.path)).settings.name == entry.name
    with pytest.raises(Exception, match="unknown instance decoder"):
        find_instance_decoder("nonesuch")
    assert main(["heads", "list"]) == 0
    out = capsys.readouterr().out
    assert "instance decoders" in out and "hgsc_nuclei_instances  [shipped]" in out


# ------------------------------------------------------------------ tiling
def test_tile_cores_cover_the_region_once_and_glass_costs_nothing(nest):
    region = box(100, 200, 1400, 900)
    with open_slide(nest, mpp=0.5) as slide:
        tiles = plan_tiles(slide, region, hr_mpp=0.25, halo_px=128)
        cores = [box(*t.core) for t in tiles]
        assert shapely.union_all(cores).covers(region)
        assert all(a.intersection(b).area == 0 for i, a in enumerate(cores)
                   for b in cores[i + 1:])
        side = (1024 - 256) * 0.25 / 0.5
        assert all(abs(c.bounds[2] - c.bounds[0] - side) < 1e-6 for c in cores)
        glass = TissueMask(np.zeros((15, 15), bool), (100.0, 100.0))
        assert plan_tiles(slide, region, hr_mpp=0.25, halo_px=128, tissue=glass) == []
        with pytest.raises(PromptError, match="halo"):
            from napari_wsi_sam.pipeline.auto_decoder import DecoderSettings

            DecoderSettings(halo_px=400)


@pytest.mark.slow
def test_refine_replaces_each_proposal_only_where_wsi_sam_agrees_with_it(nest):
    from napari_wsi_sam.model.instance_model import InstanceModel
    from napari_wsi_sam.model.instance_registry import find_instance_decoder
    from napari_wsi_sam.model.predictor import WsiSamPredictor
    from napari_wsi_sam.pipeline.auto_decoder import DecoderSettings, tile_objects
    from napari_wsi_sam.pipeline.auto_region import Accepted

    model = InstanceModel.load(find_instance_decoder("hgsc_nuclei_instances").path)
    predictor = WsiSamPredictor(model="wsi-sam", head="hgsc_nuclei", device="cpu")
    region = box(400, 400, 560, 560)
    found = {}
    with open_slide(nest, mpp=0.5) as slide:
        tile = plan_tiles(slide, region, hr_mpp=0.25, halo_px=128)[0]
        for name, settings in (("plain", DecoderSettings()),
                               ("refined", DecoderSettings(refine=True)),
                               ("never", DecoderSettings(refine=True, refine_agreement=1.0))):
            found[name] = [o.geometry for o in tile_objects(
                slide, tile, model, predictor, region=region, hr_mpp=0.25, settings=settings,
                accepted=Accepted(0.3))]
    plain, refined = found["plain"], found["refined"]
    assert len(plain) >= 5 and len(refined) == len(plain)
    ious = [a.intersection(b).area / a.union(b).area for a, b in zip(plain, refined,
                                                                     strict=True)]
    changed = [v for v in ious if v < 1.0]
    assert len(changed) >= len(plain) // 2  # WSI-SAM redraws most outlines ...
    assert min(changed) >= 0.3  # ... and only where it agrees with the proposal
    assert all(a.equals(b) for a, b in zip(plain, found["never"], strict=True))
    with pytest.raises(PromptError, match="refine agreement"):
        DecoderSettings(refine_agreement=1.5)


# ------------------------------------------------------------------ the CLI, real model
REGION = (250, 250, 950, 700)
"""700x450 px of hgsc_nest at 0.5 µm/px: 4 tiles at 40x, with nuclei on the cores' borders."""


@pytest.mark.slow
def test_segment_auto_with_the_decoder_stitches_tiles_and_a_rerun_adds_none(nest, tmp_path,
                                                                             capsys):
    from napari_wsi_sam.train.datasets import load_data

    out, labels = tmp_path / "nuclei.geojson", tmp_path / "labels"
    args = ["segment", str(nest), "--auto", "--region", *map(str, REGION), "--mpp", NEST_MPP,
            "--class", "nucleus", "--device", "cpu", "--no-refine", "--labels", str(labels),
            "--out", str(out)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "[tile 4/4]" in captured.err and "decoder hgsc_nuclei_instances" in captured.err
    found = [shapely.geometry.shape(f["geometry"])
             for f in json.loads(out.read_text())["features"]]
    region = box(*REGION)
    truth = cut_to([o.geometry for o in load_data("builtin:hgsc_nest")[0].objects], region,
                   min_area=16)
    scores = match_instances(found, truth)
    assert scores.f1 >= 0.55 and scores.matched_iou >= 0.7, scores.as_dict()
    # No nucleus twice: no two objects share more than a sliver.
    tree = shapely.STRtree(found)
    for i, geometry in enumerate(found):
        for j in tree.query(geometry):
            if j != i:
                assert geometry.intersection(found[j]).area < 0.3 * min(geometry.area,
                                                                       found[j].area)
    # The true nuclei that cross a border between tile cores are never found twice ...
    with open_slide(nest, mpp=0.5) as slide:
        tiles = plan_tiles(slide, region, hr_mpp=0.25, halo_px=128)
    borders = shapely.union_all([box(*t.core).boundary for t in tiles]).intersection(
        region.buffer(-1))
    crossing = [t for t in truth if t.intersects(borders) and t.area > 40]
    assert len(crossing) >= 5
    for nucleus in crossing:
        ious = [nucleus.intersection(g).area / nucleus.union(g).area for g in found
                if g.intersects(nucleus)]
        assert sum(iou > 0.5 for iou in ious) <= 1
    whole = sum(any(nucleus.intersection(g).area / nucleus.union(g).area > 0.5 for g in found)
                for nucleus in crossing)
    # ... as often as anywhere else: a border costs no recall.
    assert whole / len(crossing) >= scores.recall - 0.15, (whole, len(crossing), scores.recall)
    with ObjectStore.open(labels / "objects.sqlite") as store:
        first = sorted(o.id for o in store.iter_live())
        objects = list(store.iter_live())
        assert all(o.model == "instance-decoder" and o.head == "hgsc_nuclei_instances"
                   and o.prompt["method"] == "decoder" for o in objects)
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "0 new objects" in captured.out and "already in the store" in captured.err
    with ObjectStore.open(labels / "objects.sqlite") as store:
        assert sorted(o.id for o in store.iter_live()) == first


@pytest.mark.slow
def test_train_task_instances_measures_held_out_blocks_and_installs(tmp_path, capsys,
                                                                    monkeypatch):
    import napari_wsi_sam.model.instance_registry as reg

    monkeypatch.setattr(reg, "installed_dir", lambda: tmp_path / "installed")
    out = tmp_path / "run"
    assert main(["train", "--task", "instances", "--data", "builtin:hgsc_nest", "--out",
                 str(out), "--epochs", "2", "--views-per-image", "6", "--device", "cpu",
                 "--features", str(tmp_path / "features"), "--install", "mine",
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    held = summary["heldout"]
    assert held["truth"] >= 5 and 0.0 <= held["f1"] <= 1.0 and "pq_ci" in held
    assert summary["installed"] == "mine"
    entry = find_instance_decoder("mine")
    assert entry.source == "installed" and entry.heldout["truth"] == held["truth"]
    # Two epochs on six views is no match for the shipped decoder: it stays the default.
    assert summary["default_at_its_scale"] is False
    assert default_instance_decoder(0.25).name == "hgsc_nuclei_instances"


@pytest.mark.slow
def test_train_instances_from_the_shipped_decoder_keeps_what_it_knew(tmp_path, capsys):
    # One short epoch from fresh weights finds next to nothing (the test above); from the
    # shipped decoder it goes on from there.
    out = tmp_path / "tuned"
    assert main(["train", "--task", "instances", "--data", "builtin:hgsc_nest", "--out",
                 str(out), "--epochs", "1", "--views-per-image", "4", "--device", "cpu",
                 "--features", str(tmp_path / "features"), "--init-decoder",
                 "hgsc_nuclei_instances", "--no-progress"]) == 0
    held = json.loads(capsys.readouterr().out)["heldout"]
    assert held["truth"] >= 5 and held["f1"] > 0.3, held
    settings = InstanceModel.load(out / "instance_decoder.pt").settings
    assert settings.train_config["lr"] == pytest.approx(5e-4)


@pytest.mark.parametrize("extra, message", [
    (["--init-head", "x.pt"], "apply to --task head only"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--init-decoder", "no_such_decoder"], "unknown instance decoder"),
    (["--class-weight", "stroma=3"], "--class-weight names stroma, which no training object"),
    (["--class-weight", "connective"], "give CLASS=WEIGHT"),
    (["--class-weight", "connective=0"], "give CLASS=WEIGHT"),
    (["--sam-mask", "joint"], "apply to --task head only"),
])
def test_train_instances_user_errors_are_one_line(tmp_path, capsys, extra, message):
    try:
        code = main(["train", "--task", "instances", "--data", "builtin:hgsc_nest", "--out",
                     str(tmp_path / "o"), *extra])
    except SystemExit as usage:  # argparse's own checks of a flag's value
        code = usage.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("extra", [["--init-decoder", "hgsc_nuclei_instances"],
                                   ["--class-weight", "connective=3"]])
def test_instance_flags_with_a_head_task_are_one_line(tmp_path, capsys, extra):
    code = main(["train", "--data", "builtin:hgsc_nest", "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--task instances only" in err and len(err.splitlines()) == 1, err
