"""The head shipped in the package and the measured rule that picks the default model."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from napari_wsi_sam.evaluation.decision import decide
from napari_wsi_sam.evaluation.runner import build_predictors, evaluate, parse_model
from napari_wsi_sam.model.head_checkpoint import load_head
from napari_wsi_sam.model.predictor import WsiSamPredictor
from napari_wsi_sam.shipped_head import (
    DECISION,
    default_decision,
    default_model,
    shipped_head_path,
)
from napari_wsi_sam.train.datasets import AnnotatedImage, load_data


def records(means: dict[str, dict[str, list[float]]]) -> pd.DataFrame:
    rows = []
    for model, by_prompt in means.items():
        for prompt, values in by_prompt.items():
            for i, value in enumerate(values):
                rows.append({"dataset": "held", "image": "a", "class_name": "c",
                             "object_id": i + 1, "model": model, "prompt": prompt,
                             "dice": value})
    return pd.DataFrame(rows)


def test_rule_needs_the_average_and_boxes():
    better_points_worse_box = records({
        "sam": {"box": [0.8, 0.8], "points:3": [0.2, 0.2]},
        "head": {"box": [0.7, 0.7], "points:3": [0.6, 0.6]}})
    assert decide(better_points_worse_box, candidate="head", baseline="sam",
                  dataset="held")["default_model"] == "sam"
    better_both = records({"sam": {"box": [0.8, 0.7], "points:3": [0.2, 0.3]},
                           "head": {"box": [0.8, 0.75], "points:3": [0.3, 0.3]}})
    decision = decide(better_both, candidate="head", baseline="sam", dataset="held")
    assert decision["default_model"] == "wsi-sam"
    assert decision["per_prompt"]["box"]["difference"] == pytest.approx(0.025)
    with pytest.raises(ValueError, match="no prompt setting"):
        decide(better_both, candidate="head", baseline="medsam", dataset="held")


def test_installed_decision_follows_its_own_numbers():
    decision = json.loads(DECISION.read_text())
    per_prompt = decision["per_prompt"]
    cand = sum(v["candidate"] for v in per_prompt.values()) / len(per_prompt)
    base = sum(v["baseline"] for v in per_prompt.values()) / len(per_prompt)
    wins = cand >= base and per_prompt["box"]["difference"] >= 0
    assert decision["default_model"] == ("wsi-sam" if wins else "sam")
    assert decision["dataset"] == "hgsc_stromal"  # held out: never trained or tuned on
    assert set(per_prompt) == {"box", "points:1", "points:3", "points:5", "points:10"}
    assert default_model() == decision["default_model"] == default_decision()["default_model"]


def test_shipped_head_is_small_and_says_how_it_was_made():
    path = shipped_head_path()
    assert path.stat().st_size < 5 * 2**20
    loaded = load_head(path)
    settings = loaded.settings
    assert (settings.hr_mpp, settings.lr_factor, settings.lam) == (0.25, 2.0, 0.5)
    assert settings.aggregation == "average" and "hgsc_nest" in settings.training_data
    predictor = WsiSamPredictor(model="wsi-sam", device="cpu", head="default")
    for key, value in loaded.head.state_dict().items():
        assert torch.equal(predictor.head.state_dict()[key], value)


def test_shipped_head_segments_held_out_nuclei(asset_path):
    """On one held-out crop: the trained head gives good masks from boxes and from points."""
    image = load_data("builtin:hgsc_stromal")[0]
    near = tuple(o for o in image.objects
                 if all(640 < c < 896 for c in o.geometry.centroid.coords[0]))
    data = [AnnotatedImage(image.dataset, image.image, near, image.mpp)]
    predictors = build_predictors([parse_model("wsi-sam")], device="cpu")
    result = evaluate(data, predictors, ["box", "points:5"], seed=0)
    means = result.groupby("prompt")["dice"].mean()
    assert means["box"] > 0.7 and means["points:5"] > 0.5
