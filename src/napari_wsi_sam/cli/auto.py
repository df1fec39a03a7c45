"""``napari-wsi-sam segment SLIDE --auto --region X0 Y0 X1 Y1``: Segment all, headless.

Every object in the region becomes an object of one class in the slide's object store (one
change-log group, so the widget's undo removes a run); --out gets this run's objects, and those an
earlier run (or a person) already made there, which the run found again instead of repeating.
Ctrl-C stops after the current crop and keeps what was stored.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import AnnotationError, PromptError, StoreError
from . import args as argtypes


def add_auto_arguments(parser: argparse.ArgumentParser) -> None:
    """The --region and the Segment all settings (defaults: `AutoSettings`, docs/results.md)."""
    group = parser.add_argument_group("segment all (--auto)")
    group.add_argument("--region", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"),
                       help="with --auto: the region to segment, level-0 pixels")
    group.add_argument("--points-per-side", type=argtypes.count(1, 256, "points per side"),
                       default=None,
                       help="grid points per HR crop side (default 64; 32 is 4x faster)")
    group.add_argument("--min-score", type=argtypes.number_in(0, 1, "the minimum score"),
                       default=None, help="minimum model score of a mask, 0..1 (SAM: predicted "
                                          "IoU; WSI-SAM: stability)")
    group.add_argument("--min-stability",
                       type=argtypes.number_in(0, 1, "the minimum stability"), default=None,
                       help="minimum stability score of a mask, 0..1")
    group.add_argument("--duplicate-overlap",
                       type=argtypes.number_in(0, 1, "the duplicate overlap"), default=None,
                       help="share of the smaller of two masks they must share to be one "
                            "object, 0..1")
    group.add_argument("--min-area", type=argtypes.number_in(0, 1e9, "the minimum area (µm²)"),
                       default=None, help="smallest object, µm² (also the islands and holes "
                                          "removed)")
    group.add_argument("--max-area", type=argtypes.number_in(0, 1e12, "the maximum area (µm²)"),
                       default=None, help="largest object, µm² (default: a tenth of the HR "
                                          "crop)")


def auto_settings(args: argparse.Namespace):
    """`AutoSettings` from the flags given, the defaults for the rest (one-line errors)."""
    from dataclasses import replace

    from ..pipeline.auto_segment import AutoSettings

    given = {"points_per_side": args.points_per_side, "min_score": args.min_score,
             "min_stability": args.min_stability,
             "duplicate_overlap": args.duplicate_overlap, "min_area_um2": args.min_area,
             "max_area_um2": args.max_area}
    return replace(AutoSettings(), **{k: v for k, v in given.items() if v is not None})


def check_auto_args(args: argparse.Namespace) -> None:
    """User errors of --auto that need no slide or model."""
    if args.region is None:
        raise PromptError("--auto needs --region X0 Y0 X1 Y1 (level-0 pixels): the region "
                          "to segment")
    if args.point or args.negative_point or args.mask_prompts:
        raise PromptError("--point, --negative-point and --mask-prompts refine one --box or "
                          "--prompts; --auto places its own points")
    if args.force:
        raise PromptError("--force does not apply to --auto: a rerun finds the objects it made "
                          "and adds none (delete objects in the widget to redo them)")
    auto_settings(args)


def check_not_auto(args: argparse.Namespace) -> None:
    """--region and the --auto settings without --auto are a mistake, said so."""
    given = [flag for flag, value in (
        ("--region", args.region), ("--points-per-side", args.points_per_side),
        ("--min-score", args.min_score), ("--min-stability", args.min_stability),
        ("--duplicate-overlap", args.duplicate_overlap), ("--min-area", args.min_area),
        ("--max-area", args.max_area)) if value is not None]
    if given:
        raise PromptError(f"{', '.join(given)} apply to --auto only (Segment all)")


def segment_auto(args: argparse.Namespace, *, choice, hr_mpp: float) -> int:
    from ..model.build import build_predictor
    from ..pipeline import Provenance, export_objects
    from ..pipeline.auto_segment import fit_region, segment_all
    from ..pipeline.embedding_store import attach as attach_embeddings
    from ..pipeline.objects import image_of
    from ..slide import open_slide
    from ..store.files import open_store

    settings = auto_settings(args)
    with open_slide(args.slide, mpp=args.mpp, backend=args.backend) as slide:
        mpp = slide.require_mpp()
        region = fit_region(slide, args.region)  # refused before the store or the model
        with open_store(slide, folder=args.labels) as store:
            if store.read_only:
                raise StoreError(f"{store.path} is read-only: choose a folder you can write "
                                 "to with --labels DIR")
            if args.color is not None:
                store.set_class(args.class_name, tuple(args.color))
            elif args.class_name not in store.classes():
                from ..store.colors import palette_color

                known = len(store.classes())
                store.set_class(args.class_name, palette_color(args.class_name, known))
            predictor = attach_embeddings(build_predictor(choice, device=args.device))
            run = segment_all(slide, region, predictor, store=store, class_name=args.class_name,
                              hr_mpp=hr_mpp, settings=settings,
                              provenance=Provenance.of(choice, hr_mpp=hr_mpp))
            ids: list[int] = []
            found: tuple[int, ...] = ()
            try:
                for step in run:
                    ids += step.ids
                    found = step.found
                    eta = ("" if step.seconds_left is None
                           else f", about {step.seconds_left:.0f} s left")
                    print(f"[crop {step.done}/{step.total}] {len(step.ids)} objects from "
                          f"{step.points} points ({step.added} so far){eta}", file=sys.stderr)
            except KeyboardInterrupt:
                run.close()
                print(f"napari-wsi-sam: interrupted; keeping the {len(ids)} objects done",
                      file=sys.stderr)
            if found:
                print(f"napari-wsi-sam: {len(found)} object(s) were already in the store and "
                      "kept (found again, not repeated)", file=sys.stderr)
            every = sorted({*ids, *found})
            if not every:
                raise PromptError(f"no object found in the region {args.region} with "
                                  f"{choice.label}; lower --min-score, or check --hr-mpp "
                                  "against the objects' size")
            try:
                written = export_objects(store, args.out, image=image_of(slide), mpp=mpp,
                                         ids=None if args.all else every)
            except AnnotationError as error:
                raise AnnotationError(f"{error}; the {len(ids)} objects of this run are kept "
                                      f"in {store.path} (napari-wsi-sam objects export)"
                                      ) from error
            folder = store.folder
    print(f"{len(ids)} new objects, {written} written to {args.out} (objects in {folder})")
    return 0
