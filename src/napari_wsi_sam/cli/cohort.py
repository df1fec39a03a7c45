"""``napari-wsi-sam batch`` and ``precompute``: many slides on dask.distributed.

Both run on a LocalCluster of ``--workers N`` processes (one thread each; 0: in this
process), or on a running cluster given by ``--scheduler`` (tcp://HOST:PORT or a scheduler
JSON file). See docs/cohorts.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import UsageError
from . import args as argtypes
from .model_args import add_model_arguments

BATCH_EPILOG = """\
manifest columns: slide,prompts,out and optionally class,model,head,hr_mpp,mpp (paths relative
to the manifest). Objects go into each slide's object store; each row's out gets the objects
of this run. A rerun skips the prompts already stored (--force redoes them).
examples:
  napari-wsi-sam batch cohort.csv --workers 4
  napari-wsi-sam batch cohort.csv --scheduler tcp://10.0.0.5:8786 --device cuda
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    batch = subparsers.add_parser(
        "batch", help="refine the GeoJSON prompts of many slides on a dask cluster",
        epilog=BATCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    batch.add_argument("manifest", type=Path, help="CSV: slide,prompts,out[,class,model,...]")
    add_model_arguments(batch)
    batch.add_argument("--class", dest="class_name", default=None,
                       help="class of unclassified features, for rows without a class cell "
                            "(default: object)")
    _cluster_arguments(batch)
    batch.add_argument("--report", type=Path, default=None, metavar="PATH",
                       help="per-slide CSV report (default: batch_report.csv beside the "
                            "manifest)")
    batch.add_argument("--mask-prompts", action="store_true",
                       help="give each polygon's own mask as a mask prompt")
    batch.add_argument("--force", action="store_true",
                       help="redo prompts an earlier run already stored (as new versions)")
    batch.set_defaults(func=_batch)

    pre = subparsers.add_parser(
        "precompute", help="store the encoder outputs of every slide's tissue, so first "
                           "prompts there cost only the decoder")
    pre.add_argument("slides", type=Path, nargs="+", metavar="SLIDE")
    add_model_arguments(pre)
    pre.add_argument("--mpp", type=argtypes.slide_mpp, default=None,
                     help="µm/px of slides that record none")
    _cluster_arguments(pre)
    pre.set_defaults(func=_precompute)


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=argtypes.count(0, 512, "the number of workers"),
                       default=None, metavar="N",
                       help="a LocalCluster of N worker processes (default: one per core, "
                            "at most 4; with --device cuda one per GPU); 0: in this process")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="a running cluster: tcp://HOST:PORT or a scheduler JSON file")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu or cuda (each worker of a LocalCluster gets one GPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _workers(args: argparse.Namespace) -> int | None:
    if args.scheduler is not None or args.workers is not None:
        return args.workers
    if args.device == "cuda":
        import torch

        return max(1, torch.cuda.device_count())
    return max(1, min(4, os.cpu_count() or 1))


def _bar(args: argparse.Namespace, total: int, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, disable=args.no_progress,
                mininterval=1.0, dynamic_ncols=True)


def _batch(args: argparse.Namespace) -> int:
    from ..cohort.batch import count_prompts, run_batch
    from ..cohort.executor import open_executor
    from ..cohort.manifest import read_manifest
    from ..cohort.report import summary_table, write_report
    from ..formats.file_io import check_output_path

    rows = [_with_defaults(row, args) for row in read_manifest(args.manifest)]
    report_path = args.report or args.manifest.parent / "batch_report.csv"
    check_output_path(report_path, flag="--report")
    with open_executor(workers=_workers(args), scheduler=args.scheduler,
                       device=args.device) as executor:
        where = (f"{executor.workers} workers" if executor.workers else "this process")
        print(f"napari-wsi-sam: {len(rows)} slides on {where}"
              + (f"; dashboard {executor.dashboard}" if executor.dashboard else ""),
              file=sys.stderr)
        with _bar(args, count_prompts(rows), "prompt") as bar:
            reports = run_batch(rows, executor, force=args.force,
                                use_mask_prompts=args.mask_prompts, on_progress=bar.update,
                                on_warning=lambda line: bar.write(
                                    f"napari-wsi-sam: warning: {line}", file=sys.stderr))
    write_report(report_path, reports)
    print(summary_table(reports))
    print(f"report: {report_path}")
    failed = [r for r in reports if r.status == "failed"]
    if failed:
        raise UsageError(f"{len(failed)} of {len(reports)} slides failed (first: "
                         f"{Path(failed[0].slide).name}: {failed[0].error}); the others are "
                         f"done, see {report_path}")
    return 0


def _with_defaults(row, args: argparse.Namespace):
    """The row, its empty model, head, hr_mpp and class cells taken from the options."""
    from dataclasses import replace

    return replace(row, model=row.model or args.model, head=row.head or args.head,
                   hr_mpp=row.hr_mpp if row.hr_mpp is not None else args.hr_mpp,
                   class_name=row.class_name if row.class_explicit or not args.class_name
                   else args.class_name)


def _precompute(args: argparse.Namespace) -> int:
    from ..cohort.executor import open_executor
    from ..cohort.precompute import run_precompute
    from .model_args import resolve_model

    choice, hr_mpp = resolve_model(args)
    with open_executor(workers=_workers(args), scheduler=args.scheduler,
                       device=args.device) as executor:
        with _bar(args, 0, "node") as bar:
            def planned(total: int) -> None:
                bar.total = total
                bar.refresh()

            reports = run_precompute(args.slides, executor, choice=choice, hr_mpp=hr_mpp,
                                     mpp=args.mpp, on_progress=bar.update, on_planned=planned)
    print(f"{'slide':<30} {'tissue':>6} {'nodes':>6} {'new':>5} {'kept':>5} {'MB':>7} "
          f"{'s':>7}")
    for r in reports:
        print(f"{Path(r.slide).name[:30]:<30} {r.tissue:>6.0%} {r.nodes:>6} {r.computed:>5} "
              f"{r.present:>5} {r.bytes / 2**20:>7.1f} {r.seconds:>7.1f}"
              + (f"  failed: {r.error}" if r.error else ""))
    failed = [r for r in reports if r.error]
    if failed:
        raise UsageError(f"{len(failed)} of {len(reports)} slides failed (first: "
                         f"{Path(failed[0].slide).name}: {failed[0].error})")
    return 0
