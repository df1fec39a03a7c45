"""The model arguments every command that segments shares (--model, --head, --hr-mpp), and
the one way they become a registry choice and a scale."""

from __future__ import annotations

import argparse
import sys

from ..model.registry import MODEL_NAMES
from . import args as argtypes


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --head and --hr-mpp, read by `model.registry.resolve` (segment and demo)."""
    parser.add_argument("--model", default=None, choices=MODEL_NAMES,
                        help="model to run (default: the one that measured best held out at "
                             "the HR magnification, docs/results.md; sam where none was "
                             "measured)")
    parser.add_argument("--head", default=None, metavar="NAME_OR_PATH",
                        help="WSI-SAM head: a name from `napari-wsi-sam heads list` or a head "
                             ".pt file (implies --model wsi-sam; its scale is the default "
                             "--hr-mpp)")
    parser.add_argument("--hr-mpp", type=argtypes.hr_mpp, default=None,
                        help="HR crop µm/px (default: the head's scale, else 1.0 = 10x; LR is "
                             "twice that)")


def resolve_model(args: argparse.Namespace) -> tuple:
    """(choice, hr_mpp) for the model arguments; the scale warning goes to stderr."""
    from ..model.registry import resolve

    resolved = resolve(args.model, head=args.head, hr_mpp=args.hr_mpp)
    if resolved.warning:
        print(f"napari-wsi-sam: warning: {resolved.warning}", file=sys.stderr)
    return resolved.choice, resolved.hr_mpp
