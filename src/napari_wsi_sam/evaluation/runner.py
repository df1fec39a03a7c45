"""Run models on annotated objects with simulated prompts and score each mask (Dice).

The protocol (docs/evaluation.md) is the same for every model:

- crops: each object's crop pair is the one the widget would cut for its exact box (the
  pipeline's snapped half-crop grid at the evaluation's HR µm/px), so neighbours share crops;
- ground truth: the object's polygon on the HR crop's pixel grid (pixel centres inside);
  objects under ``min_area`` HR pixels are left out;
- box: the tight box with seeded noise (centre ±10% of its size, sides ±20%);
- points:k: the first k of a seeded random order of the object's pixels (positive points;
  3 points are a subset of 5); every model gives its single-mask output, as in the widget
  (SAM's "best of three" for one point picks the whole tissue on nuclei: docs/evaluation.md);
- Dice on the HR crop grid within the slide; an empty prediction scores 0.

Seeds depend on (seed, image, object), never on the model, so all models see the same prompts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UsageError
from ..model.build import build_predictor
from ..model.embedding_cache import EmbeddingCache
from ..model.predictor import WsiSamPredictor
from ..model.registry import BASE_MODELS, ModelChoice, parse_choice
from ..model.sam import SamParts, load_sam
from ..pipeline.segment import crop_pair, embedding_key
from ..progress import Progress, no_progress
from ..prompts import Prompt
from ..slide import open_slide
from ..slide.crop_grid import CropPairCache, snapped_center
from ..train.datasets import AnnotatedImage
from ..train.prompt_noise import noisy_box, point_order
from ..train.sampler import rasterise
from ..windows import WindowMask

logger = logging.getLogger(__name__)

CHUNK = 16


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate: its label in the tables and the registry's choice."""

    label: str
    choice: ModelChoice

    @property
    def kind(self) -> str:
        return self.choice.model


def parse_model(text: str) -> ModelSpec:
    """``MODEL[:CHECKPOINT]`` or ``LABEL=MODEL[:CHECKPOINT]``, MODEL and CHECKPOINT as the
    model registry reads them (`registry.parse_choice`): wsi-sam alone is the shipped head,
    sam-decoder needs its checkpoint."""
    label, _, spec = text.rpartition("=") if "=" in text else ("", "", text)
    choice = parse_choice(spec)
    if not label:
        label = choice.model if choice.head is None and choice.decoder is None else (
            f"{choice.model}:{_short(choice)}")
    return ModelSpec(label.strip(), choice)


def _short(choice: ModelChoice) -> str:
    path = choice.decoder if choice.decoder is not None else choice.head.path  # type: ignore[union-attr]
    if choice.head is not None and choice.head.source != "file":
        return choice.head.name
    return path.parent.name or path.stem


def parse_prompt(text: str) -> tuple[str, int]:
    """``box`` -> ("box", 0); ``points:K`` -> ("points", K)."""
    text = text.strip()
    if text == "box":
        return "box", 0
    kind, _, k = text.partition(":")
    if kind == "points" and k.isdigit() and int(k) >= 1:
        return "points", int(k)
    raise UsageError(f"unknown prompt setting {text!r}; use box or points:K (K >= 1)")


def build_predictors(specs: list[ModelSpec], *, device: str = "auto",
                     mobile: SamParts | None = None) -> dict[str, WsiSamPredictor]:
    """One predictor per model (`model.build.build_predictor`); the MobileSAM ones share the
    encoder and its embedding cache."""
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise UsageError(f"two models share a label in {labels}; name them LABEL=MODEL:CKPT")
    mobile = mobile if mobile is not None else load_sam("mobile_sam", device="cpu")
    shared = EmbeddingCache(1 << 30)
    predictors = {}
    for spec in specs:
        if spec.choice.base.weights == "mobile_sam":
            predictors[spec.label] = build_predictor(spec.choice, device=device, cache=shared,
                                                     parts={"mobile_sam": mobile})
        else:
            predictors[spec.label] = build_predictor(spec.choice, device=device)
    return predictors


def evaluate(data: list[AnnotatedImage], predictors: dict[str, WsiSamPredictor],
             prompts: list[str], *, hr_mpp: float = 0.25, seed: int = 0,
             min_area: int = 16, max_objects: int | None = None,
             progress: Progress = no_progress) -> pd.DataFrame:
    """Dice of every model on every object and prompt setting: one row each.

    Columns: dataset, image, class_name, object_id, area_hr_px, model, prompt, dice.
    max_objects: a seeded random subset per image (quick runs).
    """
    settings = [(text, *parse_prompt(text)) for text in prompts]
    rows: list[dict[str, Any]] = []
    for index, image in enumerate(data):
        with open_slide(image.image, mpp=image.mpp) as slide:
            groups = _crop_groups(slide, image, hr_mpp=hr_mpp, seed=seed,
                                  max_objects=max_objects)
            crops_cache = CropPairCache(2)
            for centre, objects in progress(iter(groups.items()), len(groups),
                                            f"{image.name} crops"):
                pair = crop_pair(slide, Prompt.from_box(objects[0][1]), hr_mpp=hr_mpp,
                                 center=centre, crop_cache=crops_cache)
                truth = _truths(objects, pair, min_area)
                if not truth:
                    continue
                key = embedding_key(slide, pair)
                rows.extend(_score_crop(image, index, pair, key, truth, predictors, settings,
                                        seed=seed))
    return pd.DataFrame(rows, columns=["dataset", "image", "class_name", "object_id",
                                       "area_hr_px", "model", "prompt", "dice"])


def _crop_groups(slide, image: AnnotatedImage, *, hr_mpp: float, seed: int,
                 max_objects: int | None) -> dict[tuple[float, float], list]:
    """Objects by the snapped crop centre of their exact box (the widget's crop)."""
    objects = list(image.objects)
    if max_objects is not None and len(objects) > max_objects:
        keep = np.random.default_rng([seed, 7]).choice(len(objects), max_objects, replace=False)
        objects = [objects[i] for i in sorted(keep)]
    width, height = slide.dimensions
    groups: dict[tuple[float, float], list] = {}
    for obj in objects:
        box = np.array(obj.geometry.bounds, dtype=float)
        if box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
            continue
        centre = snapped_center(slide, Prompt.from_box(box), hr_mpp=hr_mpp)
        groups.setdefault(centre, []).append((obj, box))
    return groups


def _truths(objects: list, pair, min_area: int) -> list[tuple[Any, WindowMask]]:
    out = []
    for obj, _ in objects:
        window = rasterise(obj.geometry, pair.hr.map)
        if window is None:
            continue
        window = WindowMask(window.mask & _valid_window(pair.hr.valid, window), window.origin)
        if window.area >= min_area:
            out.append((obj, window))
    return out


def _valid_window(valid: np.ndarray, window: WindowMask) -> np.ndarray:
    x0, y0 = window.origin
    h, w = window.mask.shape
    out = np.zeros((h, w), dtype=bool)
    ys, xs = max(0, -y0), max(0, -x0)
    ye, xe = min(h, valid.shape[0] - y0), min(w, valid.shape[1] - x0)
    if ye > ys and xe > xs:
        out[ys:ye, xs:xe] = valid[y0 + ys:y0 + ye, x0 + xs:x0 + xe]
    return out


def _score_crop(image: AnnotatedImage, index: int, pair, key, truth, predictors, settings, *,
                seed: int) -> list[dict[str, Any]]:
    rows = []
    size = pair.hr.valid.shape[0]
    for start in range(0, len(truth), CHUNK):
        chunk = truth[start:start + CHUNK]
        dense = np.stack([w.dense(size) for _, w in chunk])
        boxes = np.stack([noisy_box(w.box, np.random.default_rng([seed, index, o.id, 0]))
                          for o, w in chunk])
        orders = [point_order(w, np.random.default_rng([seed, index, o.id, 1]))
                  for o, w in chunk]
        for text, kind, k in settings:
            prompt: dict[str, Any] = {}
            if kind == "box":
                prompt["boxes"] = boxes
            else:
                prompt["points"] = np.stack([o[np.arange(k) % len(o)] for o in orders])
                prompt["point_labels"] = np.ones((len(chunk), k), dtype=np.int64)
            for label, predictor in predictors.items():
                if kind != "box" and BASE_MODELS[predictor.model].box_only:
                    continue
                prediction = predictor.predict(
                    pair.hr.load, pair.lr.load, hr_to_lr=pair.hr_to_lr, cache_key=key,
                    **prompt)
                masks = prediction.masks & pair.hr.valid
                for (obj, window), mask, truth_mask in zip(chunk, masks, dense, strict=True):
                    rows.append({"dataset": image.dataset, "image": image.name,
                                 "class_name": obj.class_name or "unclassified",
                                 "object_id": int(obj.id), "area_hr_px": window.area,
                                 "model": label, "prompt": text,
                                 "dice": dice(mask, truth_mask)})
    return rows


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P| + |T|); 1 when both are empty, 0 when only one is."""
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, truth).sum()) / total
