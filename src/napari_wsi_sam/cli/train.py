"""``napari-wsi-sam train``: train a WSI-SAM head (or SAM*, the decoder baseline) on annotations."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import args as argtypes

# torch is imported only when the command runs.


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a WSI-SAM head on annotated images (SAM stays frozen)",
        description="Cut concentric HR/LR crop pairs around annotated objects, cache their "
                    "encoder outputs on disk, and train WSI-SAM's head with noisy box, point "
                    "and mask prompts (see docs/training.md).")
    parser.add_argument("--data", action="append", required=True, metavar="SPEC",
                        help="SLIDE (the objects of its object store, as annotated in the "
                             "widget), builtin:hgsc_nest, IMAGE=ANNOTATIONS (GeoJSON, ASAP "
                             ".xml, COCO .json, .parquet, instance mask, a store folder), or a "
                             "manifest .json; repeatable")
    parser.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                        help="train on the objects of these classes only (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="folder for checkpoints and logs")
    parser.add_argument("--task", choices=["head", "instances"], default="head",
                        help="head: a WSI-SAM head for prompts (default); instances: the "
                             "instance decoder Segment all uses (docs/segment_all.md)")
    parser.add_argument("--mode", choices=["wsi-sam", "sam-decoder"], default="wsi-sam",
                        help="wsi-sam: the new head; sam-decoder: fine-tune SAM's decoder (SAM*)")
    parser.add_argument("--lambda", dest="lam", type=float, default=0.5,
                        help="λ in λ·L_high + (1-λ)·L_low (default 0.5)")
    parser.add_argument("--aggregation", choices=["average", "max", "concat_fc", "sum"],
                        default="average", help="HR/LR token aggregation (default average)")
    parser.add_argument("--sam-mask", choices=["separate", "joint"], default="separate",
                        help="separate: SAM's mask from its own decoder pass (an untrained head "
                             "is exactly SAM; three passes a prompt); joint: from the HR pass, "
                             "as the paper's reference does (two passes, a faster prompt)")
    parser.add_argument("--hr-mpp", type=argtypes.hr_mpp, default=0.25,
                        help="HR crop µm/px (default 0.25, 40x, for nuclei)")
    parser.add_argument("--lr-factor", type=argtypes.lr_factor, default=2.0,
                        help="LR µm/px = HR x this")
    parser.add_argument("--mpp", type=argtypes.slide_mpp, default=None,
                        help="µm/px of images whose files carry none")
    parser.add_argument("--epochs", type=int, default=None,
                        help="default 6 for a head, 20 for an instance decoder")
    parser.add_argument("--views-per-image", type=int, default=None,
                        help="crop pairs planned per image (each encoded once; default 24 for "
                             "a head, 48 for an instance decoder)")
    parser.add_argument("--class-weight", type=argtypes.class_weight, action="append",
                        default=None, metavar="CLASS=WEIGHT",
                        help="--task instances: this class's objects weigh WEIGHT in the loss "
                             "(e.g. connective=3 where stroma's nuclei are few); repeatable")
    parser.add_argument("--objects-per-view", type=int, default=12,
                        help="objects trained per crop pair per epoch")
    parser.add_argument("--batch", type=int, default=4, help="objects per optimiser step")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--features", type=Path, default=None,
                        help="feature cache folder (default: the package cache)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--heldout", type=argtypes.fraction, default=None, metavar="FRACTION",
                        help="hold out about this fraction of the objects by spatial blocks, "
                             "measure the head against SAM on them (boxes, 3 points) and write "
                             "the result into the head (wsi-sam mode)")
    parser.add_argument("--init-head", type=Path, default=None, metavar="HEAD.pt",
                        help="start from this head's weights (go on learning with new objects)")
    parser.add_argument("--init-decoder", default=None, metavar="NAME_OR_PATH",
                        help="--task instances: start from this instance decoder (shipped, "
                             "installed or a file) and go on learning from your objects, at "
                             f"a gentler learning rate ({FINE_TUNE_LR:g})")
    parser.add_argument("--install", default=None, metavar="NAME",
                        help="install the head into the model registry under NAME; with "
                             "--heldout it becomes the default at its magnification if it "
                             "beat SAM")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from ..model.head_checkpoint import HeadSettings
    from ..model.wsi_sam import HeadConfig
    from ..progress import cli_progress
    from ..train.datasets import load_data
    from ..train.trainer import TrainConfig, train

    if args.task != "instances" and args.init_decoder is not None:
        from ..errors import TrainingError

        raise TrainingError("--init-decoder applies to --task instances only; a head starts "
                            "from --init-head")
    if args.task != "instances" and args.class_weight:
        from ..errors import TrainingError

        raise TrainingError("--class-weight applies to --task instances only")
    data = load_data(args.data, mpp=args.mpp, classes=args.classes)
    if args.task == "instances":
        return _instances(args, data)
    head = HeadSettings(config=HeadConfig(aggregation=args.aggregation,
                                          sam_mask=args.sam_mask), lam=args.lam,
                        hr_mpp=args.hr_mpp, lr_factor=args.lr_factor)
    config = TrainConfig(mode=args.mode, head=head, epochs=args.epochs or 6,
                         views_per_image=args.views_per_image or 24,
                         objects_per_view=args.objects_per_view, batch=args.batch, lr=args.lr,
                         weight_decay=args.weight_decay, seed=args.seed,
                         data=", ".join(args.data))
    if args.heldout is not None or args.install is not None or args.init_head is not None:
        return _own_head(args, data, config)
    result = train(data, config, args.out, resume=args.resume, device=args.device,
                   feature_dir=args.features, progress=cli_progress(args.no_progress))
    summary = {"model": str(result.model_path), "log": str(result.log_path),
               "plot": str(result.plot_path), "steps": result.steps,
               "epochs_run": result.epochs_run, "views": result.views,
               "objects": result.objects, "crops_encoded": result.cache_misses,
               "seconds": round(result.seconds, 1),
               "final_epoch_loss": _last_epoch_mean(result.history)}
    print(json.dumps(summary, indent=2))
    return 0


def _own_head(args: argparse.Namespace, data: list, config) -> int:
    """A head measured on held-out objects (and installed when asked), as the widget does."""
    import sys

    from ..errors import TrainingError
    from ..model.registry import install_head
    from ..session.own_head import train_and_measure
    from ..train.heldout_split import HELDOUT_FRACTION, plan_head

    if args.mode != "wsi-sam":
        raise TrainingError("--heldout, --init-head and --install train WSI-SAM heads; drop "
                            "--mode sam-decoder")
    fraction = args.heldout if args.heldout is not None else HELDOUT_FRACTION
    plan = plan_head(data, hr_mpp=args.hr_mpp, heldout_fraction=fraction, seed=args.seed)
    print(f"napari-wsi-sam: {plan.describe()}", file=sys.stderr)

    def report(step) -> None:
        if not args.no_progress:
            print(f"\repoch {step.epoch}/{step.epochs}, step {step.step}/{step.steps}, loss "
                  f"{step.loss:.3f}, about {step.seconds_left / 60:.1f} min left", end="",
                  file=sys.stderr, flush=True)

    trained = train_and_measure(plan, args.out, config=config, device=args.device,
                                init_head=args.init_head, on_step=report,
                                feature_dir=args.features, seed=args.seed,
                                structure=", ".join(plan.classes))
    print(file=sys.stderr)
    summary = {"model": str(trained.path), "beats_sam": trained.beats_sam,
               "heldout": trained.evidence["per_prompt"], "trained_on": plan.describe()}
    if args.install:
        head = install_head(trained.path, name=args.install)
        summary["installed"] = f"{head.name} ({head.label})"
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(f"napari-wsi-sam: {trained.summary()}", file=sys.stderr)
    return 0


FINE_TUNE_LR = 5e-4
"""An instance decoder continued from trained weights learns at a quarter of the fresh rate, so
a few steps on a user's objects adapt it instead of undoing what it knew."""


def _instances(args: argparse.Namespace, data: list) -> int:
    """An instance decoder, always measured on held-out blocks (and installed when asked)."""
    import sys

    from ..errors import TrainingError
    from ..model.instance_model import InstanceModel
    from ..model.instance_registry import (
        default_instance_decoder,
        find_instance_decoder,
        install_instance_decoder,
    )
    from ..session.own_instances import HELDOUT_FRACTION, train_and_measure_instances
    from ..train.instance_trainer import InstanceTrainConfig

    unknown = sorted({name for name, _ in args.class_weight or []}
                     - {o.class_name for image in data for o in image.objects})
    if unknown:
        raise TrainingError(f"--class-weight names {', '.join(unknown)}, which no training "
                            f"object has; check the class names (`objects info` lists them)")
    wrong = [flag for flag, given in (("--mode sam-decoder", args.mode != "wsi-sam"),
                                      ("--init-head", args.init_head is not None),
                                      ("--sam-mask joint", args.sam_mask != "separate"),
                                      ("--resume", args.resume)) if given]
    if wrong:
        raise TrainingError(f"{', '.join(wrong)} apply to --task head only")
    for flag, value in (("--epochs", args.epochs), ("--views-per-image", args.views_per_image)):
        if value is not None and value < 1:
            raise TrainingError(f"{flag} must be >= 1, got {value}")
    start_from = None
    if args.init_decoder is not None:
        entry = find_instance_decoder(args.init_decoder)
        start_from = InstanceModel.load(entry.path).decoder
        if abs(entry.hr_mpp - args.hr_mpp) > 1e-9:
            print(f"napari-wsi-sam: note: {entry.name} was trained at {entry.hr_mpp:g} µm/px; "
                  f"this run trains it at {args.hr_mpp:g} µm/px (--hr-mpp)", file=sys.stderr)
    config = InstanceTrainConfig(hr_mpp=args.hr_mpp, lr_factor=args.lr_factor,
                                 epochs=args.epochs or 20,
                                 views_per_image=args.views_per_image or 48, seed=args.seed,
                                 class_weights=tuple(args.class_weight or ()),
                                 **({"decoder": start_from.config, "lr": FINE_TUNE_LR}
                                    if start_from else {}))
    fraction = args.heldout if args.heldout is not None else HELDOUT_FRACTION

    def report(step) -> None:
        if not args.no_progress:
            print(f"\repoch {step.epoch}/{step.epochs}, step {step.step}/{step.steps}, loss "
                  f"{step.loss:.3f}, about {step.seconds_left / 60:.1f} min left", end="",
                  file=sys.stderr, flush=True)

    trained = train_and_measure_instances(data, args.out, config=config, fraction=fraction,
                                          seed=args.seed, device=args.device,
                                          feature_dir=args.features, on_step=report,
                                          start_from=start_from)
    print(file=sys.stderr)
    summary: dict[str, object] = {"model": str(trained.path), "heldout": trained.heldout,
                                  "trained_on": trained.split.describe()}
    if args.install:
        entry = install_instance_decoder(trained.path, name=args.install)
        best = default_instance_decoder(entry.hr_mpp)
        summary["installed"] = entry.name
        summary["default_at_its_scale"] = best is not None and best.path == entry.path
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(f"napari-wsi-sam: {trained.summary()}", file=sys.stderr)
    return 0


def _last_epoch_mean(history: list[dict]) -> float | None:
    if not history:
        return None
    last = history[-1]["epoch"]
    values = [row["loss"] for row in history if row["epoch"] == last]
    return round(sum(values) / len(values), 4)
