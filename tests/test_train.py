"""Training on real nuclei (histolytics hgsc_nest) with the real MobileSAM weights: prompt noise,
crop pairs and their masks, the feature cache, the loss, and short real training runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from napari_wsi_sam.cli import main
from napari_wsi_sam.model.decoder_checkpoint import load_sam_decoder
from napari_wsi_sam.model.head_checkpoint import HeadSettings, load_head
from napari_wsi_sam.model.sam import load_sam
from napari_wsi_sam.model.wsi_sam import HeadConfig
from napari_wsi_sam.prompts import Prompt
from napari_wsi_sam.slide import concentric_crops, open_slide
from napari_wsi_sam.train.datasets import load_data
from napari_wsi_sam.train.feature_cache import FeatureCache
from napari_wsi_sam.train.losses import dice_loss, mask_loss, wsi_sam_loss
from napari_wsi_sam.train.prompt_noise import (
    noisy_box,
    noisy_mask_logits,
    point_order,
    sample_points,
)
from napari_wsi_sam.train.sampler import CropView, plan_views, render_view, view_maps, view_objects
from napari_wsi_sam.train.trainer import TrainConfig, TrainingError, train
from napari_wsi_sam.windows import WindowMask

pytestmark = pytest.mark.slow  # the real model on CPU

HR_MPP = 0.25


@pytest.fixture(scope="module")
def nest():
    return load_data("builtin:hgsc_nest")


@pytest.fixture(scope="module")
def labels(asset_path):
    return np.load(asset_path("hgsc_nest_inst_mask.npz"))["nuc_raster"]


@pytest.fixture(scope="module")
def mobile(asset_path):
    return load_sam("mobile_sam", checkpoint=asset_path("mobile_sam.pt"))


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


# --------------------------------------------------------------------------- prompt noise
def test_noisy_box_stays_within_the_documented_noise():
    rng = np.random.default_rng(0)
    box = np.array([100.0, 200.0, 140.0, 260.0])  # 40 x 60
    for _ in range(500):
        x0, y0, x1, y1 = noisy_box(box, rng)
        assert abs((x0 + x1) / 2 - 120) <= 0.1 * 40 + 1e-9
        assert abs((y0 + y1) / 2 - 230) <= 0.1 * 60 + 1e-9
        assert 0.8 * 40 - 1e-9 <= x1 - x0 <= 1.2 * 40 + 1e-9
        assert 0.8 * 60 - 1e-9 <= y1 - y0 <= 1.2 * 60 + 1e-9
    a = noisy_box(box, np.random.default_rng(5))
    np.testing.assert_array_equal(a, noisy_box(box, np.random.default_rng(5)))


def test_points_lie_on_the_object_and_grow_by_prefix(labels):
    label = int(np.bincount(labels.ravel())[1:].argmax()) + 1
    ys, xs = np.nonzero(labels == label)
    window = WindowMask(labels[ys.min():ys.max() + 1, xs.min():xs.max() + 1] == label,
                        (200, 200))
    assert window.area > 0
    order = point_order(window, np.random.default_rng(1))
    assert len(order) == window.area
    dense = window.dense(1024)
    for x, y in order[:10]:
        assert dense[int(y), int(x)]
    again = point_order(window, np.random.default_rng(1))
    np.testing.assert_array_equal(sample_points(window, 3, np.random.default_rng(1)), again[:3])


def test_noisy_mask_prompt_is_close_but_not_equal(labels):
    label = int(np.bincount(labels.ravel())[1:].argmax()) + 1  # the largest nucleus
    ys, xs = np.nonzero(labels == label)
    window = WindowMask(np.zeros((np.ptp(ys) + 1, np.ptp(xs) + 1), bool), (0, 0))
    window.mask[ys - ys.min(), xs - xs.min()] = True
    window = WindowMask(np.kron(window.mask, np.ones((4, 4), bool)), (400, 400))  # ~40x
    logits = noisy_mask_logits(window, np.random.default_rng(0))
    coarse = window.dense(1024).reshape(256, 4, 256, 4).mean(axis=(1, 3)) > 0.5
    noisy = logits > 0
    iou = (noisy & coarse).sum() / (noisy | coarse).sum()
    assert 0.5 < iou < 1.0


# --------------------------------------------------------------------------- crop pairs
@pytest.mark.parametrize("transpose", [False, True])
def test_object_masks_match_the_label_image_in_flipped_views(nest, labels, transpose):
    image = nest[0]
    with open_slide(image.image, mpp=image.mpp) as slide:
        for flip_x, flip_y in ((False, False), (True, False), (False, True), (True, True)):
            view = CropView(0, (700.0, 650.0), HR_MPP, 2.0, flip_x, flip_y,
                            transpose=transpose)
            inside = view_objects(view, slide, list(image.objects))
            assert len(inside) > 50
            hr_map, lr_map = view_maps(view, slide)
            for obj in inside[::10]:
                for window, cmap in ((obj.hr, hr_map), (obj.lr, lr_map)):
                    # Each crop pixel's centre, mapped to the slide, must carry the object's label.
                    ys, xs = np.nonzero(window.dense(1024))
                    if transpose:  # crop pixel (x, y) is the flipped crop's (y, x)
                        xs, ys = ys, xs
                    cx = 1024 - xs - 0.5 if flip_x else xs + 0.5
                    cy = 1024 - ys - 0.5 if flip_y else ys + 0.5
                    slide_xy = cmap.to_slide(np.stack([cx, cy], axis=1)).astype(int)
                    hits = labels[slide_xy[:, 1], slide_xy[:, 0]] == obj.object_id
                    assert hits.mean() == 1.0


def test_render_view_flips_hr_and_lr_together(nest):
    image = nest[0]
    with open_slide(image.image, mpp=image.mpp) as slide:
        plain = concentric_crops(slide, Prompt.from_points([[600.0, 600.0]]), hr_mpp=HR_MPP,
                                 center=(600.0, 600.0))
        hr, lr = render_view(CropView(0, (600.0, 600.0), HR_MPP, 2.0, True, True), slide)
        np.testing.assert_array_equal(hr, plain.hr.image[::-1, ::-1])
        np.testing.assert_array_equal(lr, plain.lr.image[::-1, ::-1])
        turned, _ = render_view(CropView(0, (600.0, 600.0), HR_MPP, 2.0, True, False,
                                         transpose=True), slide)
        np.testing.assert_array_equal(turned, plain.hr.image[:, ::-1].transpose(1, 0, 2))


def test_planned_views_are_seeded_and_on_the_slide(nest):
    image = nest[0]
    with open_slide(image.image, mpp=image.mpp) as slide:
        objects = [list(image.objects)]
        a = plan_views(objects, [slide], views_per_image=30, hr_mpp=HR_MPP, lr_factor=2.0, seed=3)
        b = plan_views(objects, [slide], views_per_image=30, hr_mpp=HR_MPP, lr_factor=2.0, seed=3)
        c = plan_views(objects, [slide], views_per_image=30, hr_mpp=HR_MPP, lr_factor=2.0, seed=4)
    assert a == b and a != c
    assert all(0 <= v.center[0] < 1500 and 0 <= v.center[1] < 1500 for v in a)
    assert len({(v.flip_x, v.flip_y) for v in a}) == 4


# --------------------------------------------------------------------------- feature cache
def test_feature_cache_encodes_each_view_once(nest, mobile, features):
    from napari_wsi_sam.model.predictor import WsiSamPredictor
    from napari_wsi_sam.train.trainer import feature_cache_for

    encoder = WsiSamPredictor(model="sam", device="cpu", parts={"mobile_sam": mobile})
    cache = feature_cache_for(encoder, features)
    image = nest[0]
    view = CropView(0, (750.0, 750.0), HR_MPP, 2.0)
    with open_slide(image.image, mpp=image.mpp) as slide:
        def render():
            return render_view(view, slide)

        def encode(crop):
            return encoder.encode(crop)

        first = cache.get_or_compute(view.token("nest"), render, encode)
        calls = encoder.encoder_calls
        second = cache.get_or_compute(view.token("nest"), render, encode)
    assert encoder.encoder_calls == calls == 2 and cache.misses == 1
    assert first[0].embedding.dtype == torch.float16
    torch.testing.assert_close(first[1].early, second[1].early)
    # Half precision keeps the features: relative error well under 1%.
    with open_slide(image.image, mpp=image.mpp) as slide:
        fresh = encoder.encode(render_view(view, slide)[0])
    err = (first[0].embedding.float() - fresh.embedding).norm() / fresh.embedding.norm()
    assert err < 5e-3
    assert view.token("nest") != CropView(0, (750.0, 750.0), HR_MPP, 2.0, True).token("nest")
    # A damaged file is recomputed, not trusted.
    cache.path(view.token("nest")).write_bytes(b"not torch")
    assert cache.get(view.token("nest")) is None
    assert FeatureCache(features, model_id="other").get(view.token("nest")) is None


# --------------------------------------------------------------------------- loss
def test_loss_weights_high_and_low_resolution():
    target = torch.zeros(2, 1, 64, 64)
    target[:, :, 20:40, 20:40] = 1
    perfect = (target * 2 - 1) * 30
    assert dice_loss(perfect, target) < 1e-3
    bad = -perfect
    high = wsi_sam_loss(perfect, target, bad, target, lam=1.0)
    low = wsi_sam_loss(perfect, target, bad, target, lam=0.0)
    half = wsi_sam_loss(perfect, target, bad, target, lam=0.5)
    assert high.total < 0.01 and low.total > 1.0
    torch.testing.assert_close(half.total, (high.high + low.low) / 2)
    assert mask_loss(torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 64, 64)) > 0.5
    with pytest.raises(ValueError, match="lambda"):
        wsi_sam_loss(perfect, target, None, None, lam=1.5)


# --------------------------------------------------------------------------- training runs
SMALL = dict(views_per_image=1, objects_per_view=4, batch=4, seed=0)


def test_training_writes_a_head_log_and_plot_and_resumes_exactly(nest, mobile, features,
                                                                tmp_path):
    straight = train(nest, TrainConfig(epochs=2, **SMALL), tmp_path / "a", parts=mobile,
                     feature_dir=features, device="cpu")
    assert straight.steps == 2 and straight.views == 1
    for name in ("head.pt", "last.pt", "epoch_001.pt", "epoch_002.pt", "loss.png", "log.csv"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    rows = list(csv.DictReader((tmp_path / "a" / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(float(r["loss"]) > 0 for r in rows)
    loaded = load_head(tmp_path / "a" / "head.pt")
    assert loaded.settings.hr_mpp == HR_MPP and loaded.settings.lam == 0.5
    assert "hgsc_nest" in loaded.settings.training_data
    # Training moved the zero-initialised last hypernetwork layer.
    last = [v for k, v in loaded.head.state_dict().items() if "hyper" in k and "weight" in k]
    assert any(v.abs().sum() > 0 for v in last)

    train(nest, TrainConfig(epochs=1, **SMALL), tmp_path / "b", parts=mobile,
          feature_dir=features, device="cpu")
    resumed = train(nest, TrainConfig(epochs=2, **SMALL), tmp_path / "b", parts=mobile,
                    feature_dir=features, device="cpu", resume=True)
    assert resumed.cache_misses == 0 and resumed.epochs_run == 1
    a = load_head(tmp_path / "a" / "head.pt").head.state_dict()
    b = load_head(tmp_path / "b" / "head.pt").head.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)

    with pytest.raises(TrainingError, match="other settings"):
        train(nest, TrainConfig(epochs=3, **{**SMALL, "batch": 2}), tmp_path / "b",
              parts=mobile, feature_dir=features, device="cpu", resume=True)


@pytest.mark.parametrize("settings", [{"lam": 0.0}, {"lam": 1.0}, {"aggregation": "max"},
                                      {"aggregation": "concat_fc"}])
def test_ablation_settings_train(nest, mobile, features, tmp_path, settings):
    head = HeadSettings(config=HeadConfig(aggregation=settings.get("aggregation", "average")),
                        lam=settings.get("lam", 0.5), hr_mpp=HR_MPP)
    result = train(nest, TrainConfig(epochs=1, head=head, **SMALL), tmp_path, parts=mobile,
                   feature_dir=features, device="cpu", max_steps=1)
    loaded = load_head(result.model_path)
    assert loaded.settings.lam == settings.get("lam", 0.5)
    assert loaded.settings.config.aggregation == settings.get("aggregation", "average")
    assert set(loaded.settings.classes) <= {"connective", "inflammatory", "neoplastic"}
    row = result.history[0]
    assert (row["loss_lr"] == 0.0) == (settings.get("lam") == 1.0)


def test_sam_decoder_mode_fine_tunes_sams_decoder(nest, mobile, features, tmp_path):
    result = train(nest, TrainConfig(mode="sam-decoder", epochs=1, **SMALL), tmp_path,
                   parts=mobile, feature_dir=features, device="cpu")
    assert result.model_path.name == "sam_decoder.pt"
    tuned = load_sam_decoder(result.model_path)
    changed = [not torch.equal(a, b) for a, b in zip(
        tuned.mask_decoder.state_dict().values(), mobile.mask_decoder.state_dict().values(),
        strict=True)]
    assert any(changed)
    assert not any(p.requires_grad for p in mobile.mask_decoder.parameters())


def test_training_errors_are_one_line(nest, mobile, features, tmp_path, capsys):
    with pytest.raises(TrainingError, match="unknown mode"):
        train(nest, TrainConfig(mode="hq-sam"), tmp_path, parts=mobile)  # type: ignore[arg-type]
    with pytest.raises(TrainingError, match="no crop holds"):
        train(nest, TrainConfig(min_area=10**9, **SMALL), tmp_path, parts=mobile,
              feature_dir=features, device="cpu")
    assert main(["train", "--data", "builtin:nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-wsi-sam: error: unknown built-in") and "\n" not in err
    assert main(["train", "--data", "missing.svs=missing.geojson", "--out",
                 str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_command_end_to_end(tmp_path, features, capsys):
    code = main(["train", "--data", "builtin:hgsc_nest", "--out", str(tmp_path / "run"),
                 "--epochs", "1", "--views-per-image", "1", "--objects-per-view", "2",
                 "--batch", "2", "--features", str(features), "--no-progress",
                 "--device", "cpu"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 1 and summary["model"].endswith("head.pt")


class _Payload:
    """Unpickling this touches `marker`: what a crafted checkpoint would do with more harm."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def test_a_crafted_resume_file_runs_no_code(nest, mobile, features, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    out.mkdir()
    torch.save({"format": "napari-wsi-sam-train-state", "epoch": _Payload(marker)},
               out / "last.pt")
    with pytest.raises(TrainingError, match="cannot resume from") as caught:
        train(nest, TrainConfig(epochs=1, **SMALL), out, parts=mobile, feature_dir=features,
              device="cpu", resume=True)
    assert not marker.exists() and "\n" not in str(caught.value)
    torch.load(out / "last.pt", weights_only=False)  # the payload is live: it would have run
    assert marker.exists()
