"""An instance decoder from the user's own objects, with held-out proof before it is used.

The objects of each image are split by spatial blocks (half an HR crop a side, drawn by a
seeded draw on the block's position, as heads are split): the decoder trains with the held-out
blocks (and a guard band around them) left out of its loss, then segments those blocks tile by
tile exactly as Segment all does, and is scored against the held-out objects (F1 at IoU 0.5,
mean matched IoU, PQ). The result goes into the decoder file; with `install` it joins the
registry, and it becomes the default at its scale only where its held-out PQ is the best
there. Above `train/` and `evaluation/` because it needs both. Qt-free: the widget and the CLI
use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from ..errors import TrainingError
from ..polygons import Areal
from ..scale import CROP_SIZE
from ..train.datasets import AnnotatedImage
from ..train.heldout_split import HELDOUT_FRACTION, MIN_HELDOUT, MIN_TRAIN

GUARD_HR_PX = 64
"""The band around held-out blocks the loss also leaves out (HR px)."""
MIN_TRUE_AREA_HR_PX = 16
"""True objects cut by a held-out block to fewer HR px than this are not scored."""

__all__ = ["HELDOUT_FRACTION", "InstanceSplit", "TrainedInstances", "measure_instances",
           "split_instances", "train_and_measure_instances"]


@dataclass(frozen=True)
class InstanceSplit:
    """Per image: the held-out blocks (level-0 polygons), and the objects counted."""

    heldout: list[Areal]
    n_train: int
    n_heldout: int

    def describe(self) -> str:
        return (f"{self.n_train} objects to train on, {self.n_heldout} held out by spatial "
                "blocks")


@dataclass(frozen=True)
class TrainedInstances:
    path: Path
    heldout: dict[str, Any]
    split: InstanceSplit
    classes: tuple[str, ...] = ()
    hr_mpp: float = 0.25

    def summary(self) -> str:
        h = self.heldout
        return (f"held out ({h['truth']} objects): F1 {h['f1']:.2f}, mean IoU "
                f"{h['mean_iou']:.2f}, PQ {h['pq']:.2f}")


def split_instances(images: Sequence[AnnotatedImage], *, hr_mpp: float,
                    fraction: float = HELDOUT_FRACTION, seed: int = 0) -> InstanceSplit:
    """Held-out blocks per image (see the module); one-line `TrainingError` when too few
    objects are left on either side."""
    if not 0.0 < fraction < 1.0:
        raise TrainingError(f"the held-out fraction must lie in (0, 1), got {fraction}")
    regions: list[Areal] = []
    n_train = n_held = 0
    for index, image in enumerate(images):
        mpp = float(image.mpp) if image.mpp is not None else _mpp_of(image)
        block = CROP_SIZE * hr_mpp / mpp / 2
        centres = np.array([o.geometry.centroid.coords[0] for o in image.objects]
                           ).reshape(-1, 2)
        keys = [tuple(k) for k in np.floor(centres / block).astype(int)]
        draw = {k: np.random.default_rng([seed, index, k[0] + 2**20, k[1] + 2**20]).random()
                for k in set(keys)}
        held = {k for k, v in draw.items() if v < fraction}
        for k in sorted(set(draw) - held, key=draw.__getitem__):  # too few: add the next
            if sum(keys.count(h) for h in held) >= MIN_HELDOUT or len(held) >= len(draw) - 1:
                break
            held.add(k)
        boxes = [shapely.box(k[0] * block, k[1] * block, (k[0] + 1) * block,
                             (k[1] + 1) * block) for k in held]
        region = shapely.union_all(boxes) if boxes else shapely.Polygon()
        regions.append(region)
        in_held = sum(1 for k in keys if k in held)
        n_held += in_held
        n_train += len(keys) - in_held
    split = InstanceSplit(regions, n_train, n_held)
    if n_train < MIN_TRAIN or n_held < MIN_HELDOUT:
        raise TrainingError(
            f"an instance decoder needs at least {MIN_TRAIN + MIN_HELDOUT} objects in "
            f"several places ({MIN_TRAIN} to train on, {MIN_HELDOUT} held out); these give "
            f"{n_train} and {n_held}: annotate more objects (every object in a few regions)")
    return split


def _mpp_of(image: AnnotatedImage) -> float:
    from ..slide import open_slide

    with open_slide(image.image) as slide:
        return float(slide.require_mpp()[0])


def measure_instances(images: Sequence[AnnotatedImage], regions: Sequence[Areal], model: Any,
                      predictor: Any, *, hr_mpp: float, settings: Any = None
                      ) -> dict[str, Any]:
    """The decoder (an `InstanceModel`) run over `regions` as Segment all runs it, scored
    against the objects there: counts, F1, mean matched IoU, PQ and their intervals."""
    from ..evaluation.instances import bootstrap_instances, cut_to, match_instances
    from ..pipeline.auto_decoder import DecoderSettings, plan_tiles, tile_objects
    from ..pipeline.auto_region import Accepted
    from ..slide import open_slide

    settings = settings or DecoderSettings()
    predicted: list[Areal] = []
    truth: list[Areal] = []
    for image, region in zip(images, regions, strict=True):
        if region.is_empty:
            continue
        with open_slide(image.image, mpp=image.mpp) as slide:
            area = shapely.intersection(region, shapely.box(0, 0, *slide.dimensions))
            mpp = slide.require_mpp()
            accepted = Accepted(settings.duplicate_overlap)
            for tile in plan_tiles(slide, area, hr_mpp=hr_mpp, halo_px=settings.halo_px):
                predicted += [o.geometry for o in tile_objects(
                    slide, tile, model, predictor, region=area, hr_mpp=hr_mpp,
                    settings=settings, accepted=accepted)]
        min_area = MIN_TRUE_AREA_HR_PX * (hr_mpp / mpp[0]) * (hr_mpp / mpp[1])
        truth += cut_to([o.geometry for o in image.objects], area, min_area=min_area)
    scores = match_instances(predicted, truth)
    return {**scores.as_dict(), **bootstrap_instances(predicted, truth),
            "objects": len(predicted), "truth": len(truth)}


def train_and_measure_instances(
    images: Sequence[AnnotatedImage], out: Path, *, config: Any = None,
    fraction: float = HELDOUT_FRACTION, seed: int = 0, device: str = "auto",
    parts: Any = None, feature_dir: Path | None = None, structure: str = "",
    on_step: Callable[..., None] | None = None, should_stop: Callable[[], bool] | None = None,
    start_from: Any = None,
) -> TrainedInstances:
    """Train on everything but the held-out blocks, measure on them, write the result into
    ``out/instance_decoder.pt``. `start_from`: a trained `InstanceDecoder` to fine-tune."""
    from ..model.instance_checkpoint import InstanceDecoderSettings, save_instance_decoder
    from ..model.instance_model import InstanceModel
    from ..model.predictor import WsiSamPredictor
    from ..model.sam import load_sam
    from ..train.instance_trainer import InstanceTrainConfig, train_instance_decoder

    config = config or InstanceTrainConfig()
    split = split_instances(images, hr_mpp=config.hr_mpp, fraction=fraction, seed=seed)
    ignore = []
    for image, region in zip(images, split.heldout, strict=True):
        mpp = float(image.mpp) if image.mpp is not None else _mpp_of(image)
        ignore.append([region.buffer(GUARD_HR_PX * config.hr_mpp / mpp)]
                      if not region.is_empty else [])
    mobile = parts if parts is not None else load_sam("mobile_sam", device="cpu")
    classes = tuple(sorted({o.class_name for i in images for o in i.objects if o.class_name}))
    base = InstanceDecoderSettings(structure=structure or ", ".join(classes) or "objects",
                                   classes=classes)
    path, _ = train_instance_decoder(images, config, out, device=device,
                                           feature_dir=feature_dir, ignore=ignore,
                                           parts=mobile, on_step=on_step,
                                           should_stop=should_stop, settings=base,
                                           start_from=start_from)
    model = InstanceModel.load(path)
    predictor = WsiSamPredictor(model="sam", device=device, parts={"mobile_sam": mobile},
                                precision=config.precision)  # type: ignore[arg-type]
    heldout = measure_instances(images, split.heldout, model, predictor, hr_mpp=config.hr_mpp)
    if heldout["truth"] == 0:
        raise TrainingError("no held-out object could be scored at this magnification")
    heldout["data"] = f"{heldout['truth']} held-out objects ({split.describe()})"
    save_instance_decoder(model.decoder, path, settings=replace(model.settings,
                                                                heldout=heldout))
    return TrainedInstances(path, heldout, split, classes, config.hr_mpp)
