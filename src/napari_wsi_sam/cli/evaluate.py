"""``napari-wsi-sam evaluate``: Dice of several models on annotated objects, as the paper's
Tables 1 and 4 and Figure 4 (protocol in docs/evaluation.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import args as argtypes

DEFAULT_PROMPTS = "box,points:1,points:3,points:5,points:10"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="Dice per object for several models and prompt kinds, with tables",
        description="Prompt every annotated object with a noisy box and k random positive "
                    "points, run each model, and write Dice per object, tables with 95%% "
                    "bootstrap intervals and a Dice-against-points plot.")
    parser.add_argument("--data", action="append", required=True, metavar="SPEC",
                        help="builtin:hgsc_stromal, IMAGE=ANNOTATIONS or a manifest; repeatable")
    parser.add_argument("--models", default="sam,medsam,wsi-sam",
                        help="comma-separated models of the registry (napari-wsi-sam heads "
                             "list): sam, medsam, wsi-sam[:HEAD NAME OR FILE], "
                             "sam-decoder:CKPT, each optionally LABEL=...; wsi-sam alone is "
                             "the shipped head")
    parser.add_argument("--prompts", default=DEFAULT_PROMPTS,
                        help=f"comma-separated box, points:K (default {DEFAULT_PROMPTS})")
    parser.add_argument("--out", type=Path, required=True, help="folder for tables and plots")
    parser.add_argument("--hr-mpp", type=argtypes.hr_mpp, default=0.25,
                        help="HR crop µm/px for every model (default 0.25, 40x)")
    parser.add_argument("--mpp", type=argtypes.slide_mpp, default=None,
                        help="µm/px of images whose files carry none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-objects", type=int, default=None,
                        help="a seeded random subset of objects per image (quick runs)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.report import write_report
    from ..evaluation.runner import build_predictors, evaluate, parse_model, parse_prompt
    from ..progress import cli_progress
    from ..train.datasets import load_data

    specs = [parse_model(text) for text in args.models.split(",") if text.strip()]
    prompts = [text.strip() for text in args.prompts.split(",") if text.strip()]
    for text in prompts:
        parse_prompt(text)
    data = load_data(args.data, mpp=args.mpp)
    predictors = build_predictors(specs, device=args.device)
    records = evaluate(data, predictors, prompts, hr_mpp=args.hr_mpp, seed=args.seed,
                       max_objects=args.max_objects,
                       progress=cli_progress(args.no_progress))
    args.out.mkdir(parents=True, exist_ok=True)
    datasets = ", ".join(sorted({image.dataset for image in data}))
    report = write_report(records, args.out, title=f"Zero-shot Dice on {datasets}",
                          n_boot=args.bootstrap, seed=args.seed)
    settings = {"data": args.data, "models": [{"label": s.label, "model": s.choice.spec}
                                              for s in specs],
                "prompts": prompts, "hr_mpp": args.hr_mpp, "seed": args.seed,
                "max_objects": args.max_objects, "objects_scored": int(
                    records.groupby(["dataset", "image"])["object_id"].nunique().sum())}
    (args.out / "settings.json").write_text(json.dumps(settings, indent=2))
    means = records.groupby(["model", "prompt"], sort=False)["dice"].mean().unstack()
    print(means.round(4).to_string())
    print(f"report: {report}")
    return 0
