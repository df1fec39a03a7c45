"""``napari-wsi-sam segment``: the widget's pipeline without Qt.

One box (with optional points) becomes one object; or every polygon of a QuPath GeoJSON file
is refined (batch refine; a single box is a batch of one). Objects go into the slide's object
store and this run's objects are exported to GeoJSON (``--all``: every live object of the
store). A rerun skips the prompts an earlier run finished (``--force`` redoes them as new
versions). Coordinates are level-0 pixels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..errors import AnnotationError, PromptError, StoreError
from ..formats.registry import check_export_path
from ..prompts import Prompt
from . import args as argtypes
from .auto import add_auto_arguments, check_auto_args, check_not_auto, segment_auto
from .model_args import add_model_arguments, resolve_model

EPILOG = """\
coordinates are level-0 slide pixels (x, y), boxes X0 Y0 X1 Y1.
examples:
  napari-wsi-sam segment slide.svs --box 1185 1980 1345 2185 --out follicle.geojson
  napari-wsi-sam segment slide.svs --box 1185 1980 1345 2185 --negative-point 1300 2150 \\
      --class follicle --out follicle.geojson
  napari-wsi-sam segment slide.svs --prompts coarse.geojson --out refined.geojson
  napari-wsi-sam segment slide.svs --auto --region 0 0 2048 2048 --class nucleus \
      --out nuclei.geojson              (the instance decoder; --method grid: point prompts)
objects are added to the object store (--labels, default <slide stem>.wsi-sam/ beside the
slide); --out gets the objects of this run only, or every live object of the store with
--all. A rerun after a crash skips what was done (resume); --force redoes it.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment", help="segment a box, or refine every polygon of a GeoJSON file, headless",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slide", type=Path, help="slide file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"),
                        help="one object: box in level-0 pixels")
    source.add_argument("--prompts", type=Path, metavar="FILE.geojson",
                        help="batch: refine every Polygon/MultiPolygon of a QuPath GeoJSON file "
                             "(its bounds as the box, its class kept)")
    source.add_argument("--auto", action="store_true",
                        help="segment all: every object in --region (the instance decoder, or "
                             "--method grid)")
    parser.add_argument("--point", type=float, nargs=2, action="append", default=[],
                        metavar=("X", "Y"), help="positive point (with --box; repeatable)")
    parser.add_argument("--negative-point", type=float, nargs=2, action="append", default=[],
                        metavar=("X", "Y"), help="negative point (with --box; repeatable)")
    parser.add_argument("--mask-prompts", action="store_true",
                        help="with --prompts: give each polygon's own mask as a mask prompt")
    add_model_arguments(parser)
    add_auto_arguments(parser)
    parser.add_argument("--mpp", type=argtypes.slide_mpp, default=None,
                        help="µm/px of the slide, when it does not record one")
    argtypes.add_backend_argument(parser)
    parser.add_argument("--class", dest="class_name", default="object",
                        help="class of new objects (with --prompts: of unclassified features)")
    parser.add_argument("--color", type=int, nargs=3, default=None, metavar=("R", "G", "B"),
                        help="colour of that class, 0..255 (default: the class's stored "
                             "colour, or the palette's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--labels", type=Path, default=None, metavar="DIR",
                        help="object store folder (default: <slide stem>.wsi-sam/ beside the "
                             "slide; created when missing, else added to)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT.geojson",
                        help="GeoJSON file for the objects of this run")
    parser.add_argument("--all", action="store_true",
                        help="export every live object of the store, not only this run's")
    parser.add_argument("--force", action="store_true",
                        help="redo prompts an earlier run already did (as new versions of "
                             "their objects) instead of skipping them")
    parser.set_defaults(func=_segment)


def _segment(args: argparse.Namespace) -> int:
    from ..model.build import build_predictor
    from ..pipeline import BatchItem, export_objects, items_from_geojson
    from ..pipeline.batch import fit_item
    from ..pipeline.embedding_store import attach as attach_embeddings
    from ..pipeline.objects import ensure_classes, image_of
    from ..slide import open_slide
    from ..store.files import open_store

    _check_args(args)
    if args.auto:
        return segment_auto(args)
    choice, hr_mpp = resolve_model(args)
    if args.prompts is not None:
        items, skipped = items_from_geojson(args.prompts)
        if not items:
            raise PromptError(f"{args.prompts} holds no Polygon or MultiPolygon to refine "
                              f"({len(skipped)} features skipped)")
        for line in skipped:
            print(f"napari-wsi-sam: skipped {line}", file=sys.stderr)
    else:
        points = [*args.point, *args.negative_point]
        labels = [1] * len(args.point) + [0] * len(args.negative_point)
        items = [BatchItem(prompt=Prompt(box=np.asarray(args.box),
                                         points=np.asarray(points).reshape(-1, 2),
                                         labels=np.asarray(labels, dtype=np.int64)),
                           source="--box")]
    with open_slide(args.slide, mpp=args.mpp, backend=args.backend) as slide:
        mpp = slide.require_mpp()
        if args.prompts is None:  # the one --box: refuse it before the store or the model
            fit_item(slide, items[0])
        with open_store(slide, folder=args.labels) as store:
            if store.read_only:  # say so before the model loads, not after it ran
                raise StoreError(f"{store.path} is read-only: choose a folder you can write "
                                 "to with --labels DIR")
            ensure_classes(store, items, default_class=args.class_name,
                           color=None if args.color is None else tuple(args.color))
            predictor = attach_embeddings(build_predictor(choice, device=args.device))
            ids = _run_batch(slide, items, predictor, store=store, args=args, mpp=mpp,
                             choice=choice, hr_mpp=hr_mpp)
            try:
                written = export_objects(store, args.out, image=image_of(slide), mpp=mpp,
                                         ids=None if args.all else ids)
            except AnnotationError as error:  # e.g. the disk filled up while segmenting
                raise AnnotationError(f"{error}; the {len(ids)} objects of this run are kept "
                                      f"in {store.path} (napari-wsi-sam objects export)"
                                      ) from error
            folder = store.folder
    print(f"{written} objects written to {args.out} (objects in {folder})")
    return 0


def _run_batch(slide, items, predictor, *, store, args: argparse.Namespace,
               mpp: tuple[float, float], choice, hr_mpp: float) -> list[int]:
    """Refine `items` (a single --box is a batch of one), one line per item on stderr;
    returns the ids of this run's objects. Items done by an earlier run are skipped (--force
    redoes them as new versions). Ctrl-C stops after the current object; the finished ones
    are kept and exported."""
    from ..model.registry import SCORE_NAMES
    from ..pipeline import Provenance, refine_batch

    ids: list[int] = []
    errors = skipped = 0
    batch = refine_batch(slide, items, predictor, store=store, hr_mpp=hr_mpp,
                         provenance=Provenance.of(choice, hr_mpp=hr_mpp),
                         default_class=args.class_name, use_mask_prompts=args.mask_prompts,
                         force=args.force)
    try:
        for step in batch:
            eta = "" if step.seconds_left is None else f", about {step.seconds_left:.0f} s left"
            if step.object_id is None and args.prompts is None:  # the one --box
                raise PromptError(str(step.reason))
            if step.object_id is None:
                errors += 1
                what = f"no object: {step.error}"
            else:
                ids.append(step.object_id)
                obj = store.get(step.object_id)
                skipped += step.skipped
                done = "already done: " if step.skipped else ""
                what = (f"{done}object {step.object_id} ({obj.area * mpp[0] * mpp[1]:.0f} µm², "
                        f"{choice.label} at {hr_mpp:g} µm/px, "
                        f"{SCORE_NAMES.get(obj.score_kind or '', 'score')} "
                        f"{obj.score if obj.score is not None else float('nan'):.2f})")
            print(f"[{step.done}/{step.total}] {what}{eta}", file=sys.stderr)
    except KeyboardInterrupt:
        batch.close()
        print(f"napari-wsi-sam: interrupted; keeping the {len(ids)} objects done",
              file=sys.stderr)
    if not ids:
        raise PromptError(f"none of the {len(items)} prompts gave an object ({errors} failed)")
    if skipped:
        print(f"napari-wsi-sam: {skipped} prompt(s) were done by an earlier run and kept "
              "(--force redoes them)", file=sys.stderr)
    return ids


def _check_args(args: argparse.Namespace) -> None:
    """User errors that need no slide or model, as one line each."""
    if args.auto:
        check_auto_args(args)
    else:
        check_not_auto(args)
    if args.prompts is not None and (args.point or args.negative_point):
        raise PromptError("--point and --negative-point refine one --box; they do not apply "
                          "to --prompts")
    if args.prompts is not None and not args.prompts.is_file():
        raise AnnotationError(f"prompts file {args.prompts} does not exist")
    if args.mask_prompts and args.prompts is None:
        raise PromptError("--mask-prompts applies to --prompts only")
    if args.color is not None and not all(0 <= v <= 255 for v in args.color):
        raise PromptError(f"--color needs three values 0..255, got {args.color}")
    check_export_path(args.out, flag="--out")
    if args.labels is not None and args.labels.exists() and not args.labels.is_dir():
        raise StoreError(f"--labels {args.labels} is a file; give the folder of an object store "
                         "(or a new folder)")
