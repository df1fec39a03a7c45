"""A head from the user's own objects: the held-out split by spatial blocks, the one-line
refusals, and (slow) a real run from an object store measured against SAM held out."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from shapely.geometry import box

from napari_wsi_sam.cli import main
from napari_wsi_sam.errors import AnnotationError, TrainingCancelled, TrainingError
from napari_wsi_sam.formats import write_geojson
from napari_wsi_sam.model import registry
from napari_wsi_sam.model.head_checkpoint import load_head
from napari_wsi_sam.paths import HOME_ENV
from napari_wsi_sam.session.own_head import train_and_measure
from napari_wsi_sam.train.datasets import AnnotatedImage, load_data
from napari_wsi_sam.train.heldout_split import GUARD, MIN_HELDOUT, MIN_TRAIN, plan_head
from napari_wsi_sam.train.trainer import TrainConfig

pytestmark = pytest.mark.slow  # the real model on CPU

HR_MPP = 0.25


@pytest.fixture
def empty_cache(tmp_path, monkeypatch, asset_path):
    """A cache with no installed heads; the real weights stay where they are."""
    weights = asset_path("mobile_sam.pt").parent
    monkeypatch.setenv("NAPARI_WSI_SAM_WEIGHTS", str(weights))
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def nest():
    (image,) = load_data("builtin:hgsc_nest")
    return image


def subset(image: AnnotatedImage, n: int, seed: int = 0) -> AnnotatedImage:
    order = np.random.default_rng(seed).permutation(len(image.objects))[:n]
    return AnnotatedImage(image.dataset, image.image,
                          tuple(image.objects[i] for i in sorted(order)), image.mpp)


def test_held_out_blocks_keep_neighbours_together_and_stay_put(nest):
    plan = plan_head([nest], hr_mpp=HR_MPP)
    train_ids = {o.id for o in plan.train[0].objects}
    held_ids = {o.id for o in plan.heldout[0].objects}
    assert not train_ids & held_ids and 0.1 < len(held_ids) / len(nest.objects) < 0.35
    # No training object lies within the guard distance of a held-out one.
    field = 1024 * HR_MPP / nest.mpp
    held = [o.geometry for o in plan.heldout[0].objects]
    for obj in plan.train[0].objects:
        assert min(obj.geometry.distance(h) for h in held) > GUARD * field
    assert plan.guarded > 0 and plan.n_train + plan.n_heldout + plan.guarded == len(
        nest.objects) - plan.too_small
    # Annotate more (here: the first half, then everything): what was held out stays held out.
    half = subset(nest, len(nest.objects) // 2)
    earlier = {o.id for o in plan_head([half], hr_mpp=HR_MPP).heldout[0].objects}
    assert earlier <= held_ids
    assert plan_head([nest], hr_mpp=HR_MPP, seed=0).heldout[0].objects == plan.heldout[0].objects
    assert {o.id for o in plan_head([nest], hr_mpp=HR_MPP, seed=1).heldout[0].objects} != held_ids


def test_too_few_or_too_small_objects_are_refused_in_one_line(nest):
    few = subset(nest, MIN_TRAIN // 2)
    with pytest.raises(TrainingError) as caught:
        plan_head([few], hr_mpp=HR_MPP)
    message = str(caught.value)
    assert "\n" not in message and f"at least {MIN_TRAIN + MIN_HELDOUT}" in message
    assert "annotate about" in message
    # At 5x (2 µm/px) these nuclei are a few HR pixels: they are counted and named.
    with pytest.raises(TrainingError, match="smaller than 16 HR pixels at 5x"):
        plan_head([subset(nest, 200)], hr_mpp=2.0)
    with pytest.raises(TrainingError, match="held-out fraction"):
        plan_head([nest], hr_mpp=HR_MPP, heldout_fraction=1.5)


def test_classes_the_data_lacks_are_named(nest):
    with pytest.raises(AnnotationError, match="no object of class 'glands'"):
        load_data("builtin:hgsc_nest", classes=["glands"])
    one = load_data("builtin:hgsc_nest", classes=["neoplastic"])
    assert {o.class_name for o in one[0].objects} == {"neoplastic"}


@pytest.fixture(scope="module")
def annotated_slide(nest, tmp_path_factory):
    """hgsc_nest as a user would have it: the image and 120 of its nuclei in its store."""
    folder = tmp_path_factory.mktemp("annotated")
    image = folder / nest.image.name
    shutil.copy(nest.image, image)
    geojson = folder / "nuclei.geojson"
    write_geojson(subset(nest, 120).objects, geojson)
    assert main(["objects", "import", str(image), str(geojson), "--mpp", "0.5"]) == 0
    return image


def test_a_slide_without_a_store_is_one_line(tmp_path, nest, capsys):
    lonely = tmp_path / "lonely.jpg"
    shutil.copy(nest.image, lonely)
    assert main(["train", "--data", str(lonely), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no object store" in err and len(err.splitlines()) == 1


def test_a_cancelled_run_installs_nothing(annotated_slide, tmp_path, empty_cache):
    data = load_data([str(annotated_slide)])
    plan = plan_head(data, hr_mpp=HR_MPP)
    with pytest.raises(TrainingCancelled, match="stays as it was"):
        train_and_measure(plan, tmp_path / "run", config=TrainConfig(epochs=1,
                                                                     views_per_image=2),
                          device="cpu", should_stop=lambda: True)
    assert registry.installed_heads() == []


@pytest.mark.slow
def test_train_from_the_store_measure_against_sam_and_install(annotated_slide, tmp_path,
                                                              empty_cache, capsys):
    out = tmp_path / "head"
    code = main(["train", "--data", str(annotated_slide), "--hr-mpp", str(HR_MPP),
                 "--heldout", "0.2", "--epochs", "1", "--views-per-image", "3",
                 "--objects-per-view", "4", "--device", "cpu", "--install", "my_nuclei",
                 "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert set(summary["heldout"]) == {"box", "points:3"}
    assert "held out" in captured.err and "vs SAM" in captured.err
    settings = load_head(out / "head.pt").settings
    assert settings.hr_mpp == HR_MPP and settings.heldout["hr_mpp"] == HR_MPP
    assert settings.heldout["per_prompt"]["box"]["n"] >= MIN_HELDOUT
    (seen,) = settings.trained_objects.values()
    assert len(seen) >= MIN_TRAIN and settings.classes
    # It is in the registry now; it is the 40x default only if it beat SAM held out.
    (installed,) = registry.installed_heads()
    assert installed.name == "my_nuclei" and installed.label.endswith("· 40x")
    default, _ = registry.default_choice(HR_MPP)
    expected = "my_nuclei" if settings.heldout["beats_baseline"] else "hgsc_nuclei"
    assert default.head.name == expected
    # The store was only read.
    with registry_store(annotated_slide) as store:
        assert store.count() == 120 and store.last_seq() == 120


def registry_store(image):
    from napari_wsi_sam.store import ObjectStore
    from napari_wsi_sam.store.files import beside

    return ObjectStore.open(beside(image) / "objects.sqlite", read_only=True)


def test_small_objects_are_left_out_and_counted(nest):
    tiny = AnnotatedImage(nest.dataset, nest.image, (*nest.objects, *(
        type(nest.objects[0])(id=10_000 + i, geometry=box(5 * i, 0, 5 * i + 1, 1))
        for i in range(30))), nest.mpp)
    plan = plan_head([tiny], hr_mpp=HR_MPP)
    assert plan.too_small == 30  # 4 HR pixels each at 40x
