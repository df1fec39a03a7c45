"""The measured rule for the default model: WSI-SAM only if it is at least as good as SAM held out.

"At least as good" means both: its mean Dice over the held-out objects, averaged over the
evaluated prompt settings (box and each number of points), is not below SAM's, and with box
prompts (how the widget is mostly used) it is not below SAM's either. The decision, the numbers
behind it and paired bootstrap intervals are written to ``heads/default.json`` beside the
shipped head, which `shipped_head.default_model` reads.

Run: ``python -m napari_wsi_sam.evaluation.decision DICE_CSV --candidate WSI-SAM
--baseline sam --dataset hgsc_stromal --head HEAD.pt --install DIR``
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from .stats import paired_difference, prompt_sort_key


def decide(records: pd.DataFrame, *, candidate: str, baseline: str, dataset: str,
           n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The default model and the evidence: per-prompt means and paired differences."""
    rows = records[records["dataset"] == dataset]
    prompts = sorted(set(rows[rows["model"] == candidate]["prompt"])
                     & set(rows[rows["model"] == baseline]["prompt"]), key=prompt_sort_key)
    if not prompts:
        raise ValueError(f"no prompt setting has both {candidate!r} and {baseline!r} on "
                         f"{dataset!r}")
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
        "default_model": "wsi-sam" if wins else "sam",
        "rule": "wsi-sam is the default only if its mean Dice on the held-out set, averaged "
                "over the prompt settings, is at least SAM's, and with boxes too",
        "dataset": dataset, "candidate": candidate, "baseline": baseline,
        "candidate_mean": round(cand, 4), "baseline_mean": round(base, 4),
        "per_prompt": per_prompt,
        "reason": (f"mean Dice over {', '.join(prompts)} on {dataset}: {candidate} {cand:.4f}, "
                   f"{baseline} {base:.4f}; with boxes {candidate} "
                   f"{'is not below' if box_ok else 'is below'} {baseline}"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=Path, help="dice_per_object.csv from evaluate")
    parser.add_argument("--candidate", required=True, help="label of the WSI-SAM head")
    parser.add_argument("--baseline", default="sam")
    parser.add_argument("--dataset", required=True, help="the held-out dataset")
    parser.add_argument("--head", type=Path, required=True, help="the evaluated head.pt")
    parser.add_argument("--install", type=Path, default=None,
                        help="copy the head and the decision here (the package's heads/)")
    args = parser.parse_args(argv)
    decision = decide(pd.read_csv(args.records), candidate=args.candidate,
                      baseline=args.baseline, dataset=args.dataset)
    text = json.dumps(decision, indent=2, ensure_ascii=False)
    print(text)
    if args.install is not None:
        args.install.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.head, args.install / "hgsc_nuclei.pt")
        (args.install / "default.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
