"""``napari-wsi-sam heads``: the WSI-SAM heads the model registry knows, and the default rule.

``list`` prints every head with its scale, what it learnt and its held-out result against SAM,
then the default model at each magnification; ``install`` copies a head file into the cache;
``decide`` measures a head against SAM from ``evaluate``'s records and writes the evidence
into the head file (and, with ``--install``, the head and the rule into a heads folder).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from . import args as argtypes


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("heads", help="WSI-SAM heads: list, install, decide")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="every head with its scale, data and result")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    listing.set_defaults(func=_list)
    install = verbs.add_parser("install", help="copy a head file into the cache")
    install.add_argument("path", type=Path, help="a head .pt file (from train)")
    install.add_argument("--name", default=None, help="registry name (default: file stem)")
    install.set_defaults(func=_install)
    decide = verbs.add_parser(
        "decide", help="measure a head against SAM held out and record the evidence",
        description="Reads evaluate's dice_per_object.csv, decides whether the head beats SAM "
                    "held out (mean Dice over the prompt settings and with boxes), and writes "
                    "the evidence into the head file.")
    decide.add_argument("records", type=Path, help="dice_per_object.csv from evaluate")
    decide.add_argument("--candidate", required=True, help="the head's label in the records")
    decide.add_argument("--baseline", default="sam")
    decide.add_argument("--dataset", required=True, help="the held-out dataset")
    decide.add_argument("--head", type=Path, required=True, help="the evaluated head .pt")
    decide.add_argument("--hr-mpp", type=argtypes.hr_mpp, default=None,
                        help="µm/px the evaluation ran at (default: settings.json beside the "
                             "records, else the head's own)")
    decide.add_argument("--structure", default=None, help="what the head segments (nuclei)")
    decide.add_argument("--install", type=Path, default=None, metavar="DIR",
                        help="copy the head into DIR and write DIR/default.json (the rule)")
    decide.set_defaults(func=_decide)


def _list(args: argparse.Namespace) -> int:
    from ..model.instance_registry import default_instance_decoder, instance_decoders
    from ..model.registry import default_rule, heads

    known = heads()
    decoders = instance_decoders()
    best = default_instance_decoder()
    if args.json:
        rows = [{"name": h.name, "source": h.source, "path": str(h.path), "label": h.label,
                 "settings": h.settings.to_dict()} for h in known]
        decoder_rows = [{"name": d.name, "source": d.source, "path": str(d.path),
                         "default": best is not None and d.path == best.path,
                         "settings": d.settings.to_dict()} for d in decoders]
        print(json.dumps({"heads": rows, "defaults": default_rule(known),
                          "instance_decoders": decoder_rows}, indent=2, ensure_ascii=False))
        return 0
    for head in known:
        print("\n".join(describe(head)))
        print()
    print("default model per magnification:")
    for name, entry in default_rule(known)["magnifications"].items():
        model = entry["model"] + (f" (head {entry['head']})" if entry["head"] else "")
        print(f"  {name:>4}: {model} - {entry['reason']}")
    print()
    print("instance decoders (Segment all, `segment --auto`):")
    if not decoders:
        print("  none; train one with `napari-wsi-sam train --task instances`")
    for decoder in decoders:
        mark = "  (default)" if best is not None and decoder.path == best.path else ""
        print(f"  {decoder.name}  [{decoder.source}]  {decoder.summary()}{mark}")
        print(f"    file: {decoder.path}")
        print(f"    trained on: {decoder.settings.training_data or 'not recorded'}")
    return 0


def describe(head: Any) -> list[str]:
    """Lines about one registry head: scale, what it learnt, its held-out result."""
    s = head.settings
    classes = ", ".join(s.classes) if s.classes else "not recorded"
    lines = [f"{head.name}  [{head.source}]  {head.label}",
             f"  file: {head.path}",
             f"  HR {s.hr_mpp:g} µm/px, LR x{s.lr_factor:g} ({s.hr_mpp * s.lr_factor:g} µm/px); "
             f"{s.config.aggregation} tokens, λ = {s.lam:g}",
             f"  classes: {classes}",
             f"  trained on: {s.training_data or 'not recorded'}"]
    held = s.heldout
    if not held:
        lines.append("  held out: not measured (napari-wsi-sam heads decide)")
        return lines
    verdict = "beats SAM" if held.get("beats_baseline") else "does not beat SAM"
    lines.append(f"  held out: {held.get('dataset')} at {held.get('hr_mpp'):g} µm/px, {verdict}"
                 f" (mean Dice {held.get('candidate_mean')} vs {held.get('baseline')} "
                 f"{held.get('baseline_mean')})")
    for prompt, row in held.get("per_prompt", {}).items():
        low, high = row["difference_95ci"]
        lines.append(f"    {prompt:>10}: {row['candidate']:.3f} vs {row['baseline']:.3f}, "
                     f"difference {row['difference']:+.3f} [{low:+.3f}, {high:+.3f}], "
                     f"n = {row['n']}")
    return lines


def _install(args: argparse.Namespace) -> int:
    from ..model.registry import install_head

    head = install_head(args.path, name=args.name)
    print(f"installed {head.name} ({head.label}) at {head.path}")
    return 0


def _decide(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import pandas as pd

    from ..errors import UsageError
    from ..evaluation.decision import decide
    from ..model.head_checkpoint import load_head, save_head
    from ..model.registry import default_rule, find_head

    if not args.records.is_file():
        raise UsageError(f"records file {args.records} does not exist; run evaluate first")
    loaded = load_head(args.head)
    hr_mpp = args.hr_mpp or _evaluated_mpp(args.records) or loaded.settings.hr_mpp
    evidence = decide(pd.read_csv(args.records), candidate=args.candidate,
                      baseline=args.baseline, dataset=args.dataset, hr_mpp=hr_mpp)
    settings = replace(loaded.settings, heldout=evidence,
                       structure=args.structure or loaded.settings.structure)
    save_head(loaded.head, args.head, settings=settings)
    print(json.dumps(evidence, indent=2, ensure_ascii=False))
    if args.install is not None:
        args.install.mkdir(parents=True, exist_ok=True)
        target = args.install / args.head.name
        if target.resolve() != args.head.resolve():
            shutil.copyfile(args.head, target)
        folder_heads = [find_head(p) for p in sorted(args.install.glob("*.pt"))]
        rule = default_rule(folder_heads)
        (args.install / "default.json").write_text(
            json.dumps(rule, indent=2, ensure_ascii=False) + "\n")
        print(f"installed {target} and the rule in {args.install / 'default.json'}",
              file=sys.stderr)
    return 0


def _evaluated_mpp(records: Path) -> float | None:
    """The HR µm/px in evaluate's settings.json beside its records, if there is one."""
    try:
        return float(json.loads((records.parent / "settings.json").read_text())["hr_mpp"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
