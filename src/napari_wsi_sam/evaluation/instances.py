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
    tree = shapely.STRtree(list(truth))
    matched_truth: set[int] = set()
    ious: list[float] = []
    for geometry in predicted:
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
            ious.append(best_iou)
    tp = len(ious)
    return InstanceScores(tp, len(predicted) - tp, len(truth) - tp,
                          float(np.mean(ious)) if ious else 0.0)
