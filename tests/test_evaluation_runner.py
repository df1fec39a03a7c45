"""The evaluation protocol on the real held-out nuclei (histolytics hgsc_stromal) with the real
weights: data loading, model specs, Dice per object, and the evaluate command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_wsi_sam.cli import main
from napari_wsi_sam.errors import AnnotationError, SlideError, UsageError, WeightsError
from napari_wsi_sam.evaluation.runner import (
    build_predictors,
    dice,
    evaluate,
    parse_model,
    parse_prompt,
)
from napari_wsi_sam.formats import write_asap_xml, write_geojson
from napari_wsi_sam.model.decoder_checkpoint import save_sam_decoder
from napari_wsi_sam.model.head_checkpoint import save_head
from napari_wsi_sam.model.sam import load_sam
from napari_wsi_sam.model.wsi_sam import WsiSamHead
from napari_wsi_sam.train.datasets import AnnotatedImage, load_data

pytestmark = pytest.mark.slow  # the real model on CPU


@pytest.fixture(scope="module")
def stromal():
    return load_data("builtin:hgsc_stromal")


@pytest.fixture(scope="module")
def one_crop(stromal):
    """The held-out nuclei whose centres snap to the crop node (768, 768): one crop pair."""
    image = stromal[0]
    near = tuple(o for o in image.objects
                 if all(640 < c < 896 for c in o.geometry.centroid.coords[0]))
    return [AnnotatedImage(image.dataset, image.image, near[:8], image.mpp)]


@pytest.fixture(scope="module")
def mobile(asset_path):
    return load_sam("mobile_sam", checkpoint=asset_path("mobile_sam.pt"))


def test_builtin_data_sets(stromal):
    (image,) = stromal
    assert image.dataset == "hgsc_stromal" and len(image.objects) == 423
    assert {o.class_name for o in image.objects} == {"connective", "inflammatory", "neoplastic"}
    (nest,) = load_data("builtin:hgsc_nest")
    assert len(nest.objects) == 1294 and nest.mpp == 0.5


def test_image_annotation_pairs_and_manifests(stromal, tmp_path):
    image = stromal[0]
    objects = list(image.objects[:20])
    write_geojson(objects, tmp_path / "a.geojson")
    write_asap_xml(objects, tmp_path / "a.xml")
    for name in ("a.geojson", "a.xml"):
        (loaded,) = load_data(f"{image.image}={tmp_path / name}", mpp=0.5)
        assert len(loaded.objects) == 20 and loaded.mpp == 0.5
        assert loaded.objects[3].geometry.equals_exact(objects[3].geometry, 1e-6)
    manifest = tmp_path / "set.json"
    manifest.write_text(json.dumps({"name": "mine", "items": [
        {"image": str(image.image), "annotations": "a.geojson", "mpp": 0.5}]}))
    (loaded,) = load_data(str(manifest))
    assert loaded.dataset == "mine" and len(loaded.objects) == 20
    with pytest.raises(AnnotationError, match="unknown built-in"):
        load_data("builtin:camelyon")
    with pytest.raises(SlideError, match="does not exist"):
        load_data(f"{tmp_path / 'none.svs'}={tmp_path / 'a.geojson'}")
    notes = tmp_path / "notes.txt"
    notes.write_text("not annotations")
    with pytest.raises(AnnotationError, match="unknown annotation format"):
        load_data(f"{image.image}={notes}")


def test_model_and_prompt_specs(tmp_path, mobile):
    assert parse_model("sam").label == "sam"
    head = save_head(WsiSamHead(), tmp_path / "runs" / "lam0" / "head.pt", hr_mpp=0.25)
    spec = parse_model(f"WSI-SAM λ=0=wsi-sam:{head}")
    assert (spec.label, spec.kind, spec.choice.head.path.name) == ("WSI-SAM λ=0", "wsi-sam",
                                                                   "head.pt")
    decoder = save_sam_decoder(mobile.mask_decoder, tmp_path / "sam_star" / "sam_decoder.pt",
                               settings={})
    assert parse_model(f"sam-decoder:{decoder}").label == "sam-decoder:sam_star"
    assert parse_prompt("points:5") == ("points", 5) and parse_prompt("box") == ("box", 0)
    for bad in ("hq-sam", "sam-decoder", "medsam:x.pt"):
        with pytest.raises(UsageError):
            parse_model(bad)
    with pytest.raises(WeightsError, match="does not exist"):
        parse_model("wsi-sam:runs/none/head.pt")
    for bad in ("points:0", "points", "scribble"):
        with pytest.raises(UsageError):
            parse_prompt(bad)
    assert dice(np.zeros(4, bool), np.zeros(4, bool)) == 1.0
    assert dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool)) == pytest.approx(2 / 3)


def test_untrained_head_scores_exactly_as_sam(one_crop, mobile, tmp_path):
    """The protocol gives every model the same prompts: a fresh head (= SAM) scores the same."""
    head = save_head(WsiSamHead(), tmp_path / "fresh.pt", hr_mpp=0.25)
    predictors = build_predictors([parse_model("sam"), parse_model(f"fresh=wsi-sam:{head}")],
                                  device="cpu", mobile=mobile)
    records = evaluate(one_crop, predictors, ["box", "points:3"], seed=0)
    assert set(records["model"]) == {"sam", "fresh"}
    wide = records.pivot_table(index=["object_id", "prompt"], columns="model", values="dice")
    assert len(wide) == 2 * records["object_id"].nunique() >= 10
    np.testing.assert_array_equal(wide["sam"].to_numpy(), wide["fresh"].to_numpy())
    box = records[(records.model == "sam") & (records.prompt == "box")]["dice"]
    assert box.mean() > 0.7  # MobileSAM with a noisy box on these nuclei
    again = evaluate(one_crop, {"sam": predictors["sam"]}, ["box"], seed=0)
    pd.testing.assert_series_equal(again["dice"].reset_index(drop=True),
                                   box.reset_index(drop=True), check_names=False)


def test_evaluate_command_writes_tables_and_plot(one_crop, tmp_path, capsys):
    out = tmp_path / "eval"
    write_geojson(one_crop[0].objects[:3], tmp_path / "three.geojson")
    data = f"{one_crop[0].image}={tmp_path / 'three.geojson'}"
    code = main(["evaluate", "--data", data, "--mpp", "0.5", "--models", "sam,medsam",
                 "--prompts", "box,points:1", "--out", str(out),
                 "--bootstrap", "100", "--no-progress", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    for name in ("report.md", "table1_box.md", "table4_points.md", "figure4_points.png",
                 "dice_per_object.csv", "settings.json"):
        assert (out / name).stat().st_size > 0
    records = pd.read_csv(out / "dice_per_object.csv")
    assert set(records[records.model == "medsam"]["prompt"]) == {"box"}
    assert main(["evaluate", "--data", "builtin:hgsc_stromal", "--models", "sam,bogus",
                 "--out", str(out)]) == 2
    assert "unknown model 'bogus'" in capsys.readouterr().err
