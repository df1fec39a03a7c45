"""``napari-wsi-sam train``: train a WSI-SAM head (or SAM*, the decoder baseline) on annotations."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# torch is imported only when the command runs.


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a WSI-SAM head on annotated images (SAM stays frozen)",
        description="Cut concentric HR/LR crop pairs around annotated objects, cache their "
                    "encoder outputs on disk, and train WSI-SAM's head with noisy box, point "
                    "and mask prompts (see docs/training.md).")
    parser.add_argument("--data", action="append", required=True, metavar="SPEC",
                        help="builtin:hgsc_nest, IMAGE=ANNOTATIONS (GeoJSON, ASAP .xml, COCO "
                             ".json, .parquet, instance mask), or a manifest .json; repeatable")
    parser.add_argument("--out", type=Path, required=True, help="folder for checkpoints and logs")
    parser.add_argument("--mode", choices=["wsi-sam", "sam-decoder"], default="wsi-sam",
                        help="wsi-sam: the new head; sam-decoder: fine-tune SAM's decoder (SAM*)")
    parser.add_argument("--lambda", dest="lam", type=float, default=0.5,
                        help="λ in λ·L_high + (1-λ)·L_low (default 0.5)")
    parser.add_argument("--aggregation", choices=["average", "max", "concat_fc", "sum"],
                        default="average", help="HR/LR token aggregation (default average)")
    parser.add_argument("--hr-mpp", type=float, default=0.25,
                        help="HR crop µm/px (default 0.25, 40x, for nuclei)")
    parser.add_argument("--lr-factor", type=float, default=2.0, help="LR µm/px = HR x this")
    parser.add_argument("--mpp", type=float, default=None,
                        help="µm/px of images whose files carry none")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--views-per-image", type=int, default=24,
                        help="crop pairs planned per image (each encoded once)")
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from ..model.head_checkpoint import HeadSettings
    from ..model.wsi_sam import HeadConfig
    from ..progress import cli_progress
    from ..train.datasets import load_data
    from ..train.trainer import TrainConfig, train

    data = load_data(args.data, mpp=args.mpp)
    head = HeadSettings(config=HeadConfig(aggregation=args.aggregation), lam=args.lam,
                        hr_mpp=args.hr_mpp, lr_factor=args.lr_factor)
    config = TrainConfig(mode=args.mode, head=head, epochs=args.epochs,
                         views_per_image=args.views_per_image,
                         objects_per_view=args.objects_per_view, batch=args.batch, lr=args.lr,
                         weight_decay=args.weight_decay, seed=args.seed,
                         data=", ".join(args.data))
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


def _last_epoch_mean(history: list[dict]) -> float | None:
    if not history:
        return None
    last = history[-1]["epoch"]
    values = [row["loss"] for row in history if row["epoch"] == last]
    return round(sum(values) / len(values), 4)
