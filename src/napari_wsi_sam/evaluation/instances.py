"""Instance-level scores of an automatic segmentation against ground-truth objects.

Objects match one to one when their IoU exceeds 0.5 (above 0.5 a match is unique, so no
assignment problem). Reported: detection precision, recall and F1, the mean IoU of matched
pairs (segmentation quality, SQ) and panoptic quality PQ = SQ x F1 (Kirillov et al. 2019).
Geometry is exact (shapely polygons in level-0 px); both sides are cut to the scored region.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely

from ..polygons import Areal, polygonal

MATCH_IOU = 0.5


@dataclass(frozen=True)
class InstanceScores:
    """Counts and scores of one comparison."""

    true_positives: int
    false_positives: int
    false_negatives: int
    matched_iou: float
    """Mean IoU of the matched pairs (0 when none)."""

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 0.0

    @property
    def recall(self) -> float:
        real = self.true_positives + self.false_negatives
        return self.true_positives / real if real else 0.0

    @property
    def f1(self) -> float:
        total = 2 * self.true_positives + self.false_positives + self.false_negatives
        return 2 * self.true_positives / total if total else 0.0

    @property
    def pq(self) -> float:
        return self.matched_iou * self.f1

    def as_dict(self) -> dict[str, float]:
        return {"tp": self.true_positives, "fp": self.false_positives,
                "fn": self.false_negatives, "precision": self.precision,
                "recall": self.recall, "f1": self.f1, "mean_iou": self.matched_iou,
                "pq": self.pq}


def cut_to(objects: Sequence[Areal], region: Areal, *, min_area: float = 1.0) -> list[Areal]:
    """The objects cut to `region`, dropping what is left under `min_area` px."""
    out = []
    for geometry in objects:
        cut = polygonal(shapely.intersection(geometry, region))
        if not cut.is_empty and cut.area >= min_area:
            out.append(cut)
    return out


def match_instances(predicted: Sequence[Areal], truth: Sequence[Areal]) -> InstanceScores:
    """One-to-one matches at IoU > 0.5 between predicted and true objects."""
    return _scores(_matches(predicted, truth), len(predicted), len(truth))


def _scores(matches: dict[int, tuple[int, float]], n_predicted: int, n_truth: int
            ) -> InstanceScores:
    ious = [iou for _, iou in matches.values()]
    tp = len(ious)
    return InstanceScores(tp, n_predicted - tp, n_truth - tp,
                          float(np.mean(ious)) if ious else 0.0)


def _matches(predicted: Sequence[Areal], truth: Sequence[Areal]
             ) -> dict[int, tuple[int, float]]:
    """predicted index -> (true index, IoU) of each match."""
    tree = shapely.STRtree(list(truth))
    matched_truth: set[int] = set()
    matches: dict[int, tuple[int, float]] = {}
    for k, geometry in enumerate(predicted):
        best, best_iou = -1, MATCH_IOU
        for j in tree.query(geometry):
            other = truth[int(j)]
            shared = shapely.intersection(geometry, other).area
            union = geometry.area + other.area - shared
            iou = shared / union if union > 0 else 0.0
            if iou > best_iou and int(j) not in matched_truth:
                best, best_iou = int(j), iou
        if best >= 0:
            matched_truth.add(best)
            matches[k] = (best, best_iou)
    return matches


def bootstrap_instances(predicted: Sequence[Areal], truth: Sequence[Areal], *,
                        block: float = 128.0, n_boot: int = 2000, seed: int = 0,
                        level: float = 0.95) -> dict[str, list[float]]:
    """95% intervals of F1, mean matched IoU and PQ by a block bootstrap over the nuclei.

    Nuclei near each other are not independent (one bad tile misses a cluster), so the
    resampled unit is a square block of `block` level-0 px: each true object and each
    unmatched prediction belongs to the block of its centre; blocks are drawn with
    replacement and their counts summed.
    """
    matches = _matches(predicted, truth)
    matched_truth = {j: iou for j, iou in matches.values()}
    cells: dict[tuple[int, int], list[float]] = {}

    def cell(geometry: Areal) -> list[float]:
        c = geometry.centroid
        key = (int(c.x // block), int(c.y // block))
        return cells.setdefault(key, [0.0, 0.0, 0.0, 0.0])  # tp, fp, fn, iou sum

    for j, geometry in enumerate(truth):
        counts = cell(geometry)
        if j in matched_truth:
            counts[0] += 1
            counts[3] += matched_truth[j]
        else:
            counts[2] += 1
    for k, geometry in enumerate(predicted):
        if k not in matches:
            cell(geometry)[1] += 1
    if not cells:
        return {}
    table = np.array(list(cells.values()))
    rng = np.random.default_rng(seed)
    draws = table[rng.integers(0, len(table), (n_boot, len(table)))].sum(axis=1)
    tp, fp, fn, iou = draws.T
    f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    mean_iou = np.where(tp > 0, iou / np.maximum(tp, 1), 0.0)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {f"{name}_ci": [float(np.percentile(v, lo)), float(np.percentile(v, hi))]
            for name, v in (("f1", f1), ("mean_iou", mean_iou), ("pq", f1 * mean_iou))}
