"""The measured rule's evidence: is a head at least as good as SAM held out, at its scale?

"At least as good" means both: its mean Dice over the held-out objects, averaged over the
evaluated prompt settings (box and each number of points), is not below SAM's, and with box
prompts (how the widget is mostly used) it is not below SAM's either. `decide` computes the
evidence from ``evaluate``'s per-object records, with paired bootstrap intervals;
``napari-wsi-sam heads decide`` writes it into the head file, where the model registry reads
it (`model.registry.rule_at`) to choose the default model at each magnification.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..errors import UsageError
from ..scale import scale_text
from .stats import paired_difference, prompt_sort_key

RULE = ("beats SAM when its mean Dice on the held-out set, averaged over the prompt settings, "
        "is at least SAM's, and with boxes too")


def decide(records: pd.DataFrame, *, candidate: str, baseline: str = "sam", dataset: str,
           hr_mpp: float, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The evidence for one head at one magnification: per-prompt means, paired differences
    with 95% intervals, and whether it beats the baseline (`RULE`)."""
    rows = records[records["dataset"] == dataset]
    prompts = sorted(set(rows[rows["model"] == candidate]["prompt"])
                     & set(rows[rows["model"] == baseline]["prompt"]), key=prompt_sort_key)
    if not prompts:
        raise UsageError(f"no prompt setting has both {candidate!r} and {baseline!r} on "
                         f"{dataset!r}; check --candidate, --baseline and --dataset")
    per_prompt: dict[str, dict[str, Any]] = {}
    for prompt in prompts:
        diff, low, high, n = paired_difference(records, candidate, baseline, prompt=prompt,
                                               dataset=dataset, n_boot=n_boot, seed=seed)
        means = rows[rows["prompt"] == prompt].groupby("model")["dice"].mean()
        per_prompt[prompt] = {"candidate": round(float(means[candidate]), 4),
                              "baseline": round(float(means[baseline]), 4),
                              "difference": round(diff, 4),
                              "difference_95ci": [round(low, 4), round(high, 4)], "n": n}
    cand = sum(v["candidate"] for v in per_prompt.values()) / len(per_prompt)
    base = sum(v["baseline"] for v in per_prompt.values()) / len(per_prompt)
    box_ok = "box" not in per_prompt or per_prompt["box"]["difference"] >= 0
    wins = cand >= base and box_ok
    return {
        "dataset": dataset, "hr_mpp": float(hr_mpp), "candidate": candidate,
        "baseline": baseline, "candidate_mean": round(cand, 4), "baseline_mean": round(base, 4),
        "per_prompt": per_prompt, "beats_baseline": wins, "rule": RULE,
        "reason": (f"held-out {dataset} at {scale_text(hr_mpp)}, mean Dice over "
                   f"{', '.join(prompts)}: {cand:.4f} against {baseline} {base:.4f}; with "
                   f"boxes {'not below' if box_ok else 'below'} {baseline}"),
    }
