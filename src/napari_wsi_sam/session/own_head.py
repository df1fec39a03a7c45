"""A head from the user's own objects, with held-out proof before it is used.

`train_and_measure` trains the head on a `train.heldout_split.HeadPlan` (starting from an
earlier head when given), then scores it and SAM on the held-out objects with the evaluation
protocol (boxes and 3 points), and writes the comparison, the objects it saw and its scale into
the head file. It lives above `train/` and `evaluation/` because it needs both; neither of
them imports the other. Nothing of any object store is changed. Qt-free: the widget (through
`session.training`) and the CLI use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import TrainingError
from ..train.heldout_split import HeadPlan

MEASURE_PROMPTS = ("box", "points:3")
"""What the held-out comparison prompts with: how the widget is used."""


@dataclass(frozen=True)
class TrainedHead:
    """A trained head file and its held-out comparison with SAM (`evaluation.decision`)."""

    path: Path
    evidence: dict[str, Any]
    plan: HeadPlan

    @property
    def beats_sam(self) -> bool:
        return bool(self.evidence.get("beats_baseline"))

    def summary(self) -> str:
        """One line: held-out Dice of the head and of SAM, with boxes and with 3 points."""
        rows = self.evidence["per_prompt"]
        parts = [f"{p}: head {r['candidate']:.3f} vs SAM {r['baseline']:.3f}"
                 for p, r in rows.items()]
        verdict = "beats SAM" if self.beats_sam else "does not beat SAM"
        return (f"held out ({self.plan.n_heldout} objects): " + "; ".join(parts)
                + f" — {verdict}")


def train_and_measure(plan: HeadPlan, out: Path, *, config: Any = None, device: str = "auto",
                      init_head: Path | None = None, parts: Any = None,
                      on_step: Callable[..., None] | None = None,
                      should_stop: Callable[[], bool] | None = None,
                      feature_dir: Path | None = None, seed: int = 0,
                      structure: str = "") -> TrainedHead:
    """Train a head on `plan.train`, measure it and SAM on `plan.heldout`, write the result
    into the head file (``out/head.pt``)."""
    import pandas as pd

    from ..evaluation.decision import decide
    from ..evaluation.runner import build_predictors, evaluate, parse_model
    from ..model.head_checkpoint import load_head, save_head
    from ..model.sam import load_sam
    from ..train.trainer import TrainConfig, train

    base = config if config is not None else TrainConfig()
    head = replace(base.head, hr_mpp=plan.hr_mpp, classes=plan.classes,
                   structure=structure or ", ".join(plan.classes))
    config = replace(base, head=head, data=plan.describe())
    mobile = parts if parts is not None else load_sam("mobile_sam", device="cpu")
    result = train(plan.train, config, out, device=device, parts=mobile, init_head=init_head,
                   on_step=on_step, should_stop=should_stop, feature_dir=feature_dir)
    path = result.model_path
    predictors = build_predictors([parse_model("sam"), parse_model(f"head=wsi-sam:{path}")],
                                  device=device, mobile=mobile)
    records = evaluate(plan.heldout, predictors, list(MEASURE_PROMPTS), hr_mpp=plan.hr_mpp,
                       seed=seed)
    if records.empty:
        raise TrainingError("no held-out object could be scored at this magnification")
    records = records.assign(dataset="held out")
    evidence = decide(records, candidate="head", baseline="sam", dataset="held out",
                      hr_mpp=plan.hr_mpp)
    loaded = load_head(path)
    seen = {i.image.name: sorted(int(o.id) for o in i.objects) for i in plan.train}
    settings = replace(loaded.settings, heldout=evidence, trained_objects=seen,
                       training_data=plan.describe())
    save_head(loaded.head, path, settings=settings)
    pd.DataFrame(records).to_csv(Path(out) / "heldout_dice.csv", index=False)
    return TrainedHead(path, evidence, plan)


__all__ = ["MEASURE_PROMPTS", "TrainedHead", "train_and_measure"]
