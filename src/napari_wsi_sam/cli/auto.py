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

METHODS = ("decoder", "grid")
GRID_ONLY = (("--points-per-side", "points_per_side"), ("--min-score", "min_score"),
             ("--min-stability", "min_stability"))
DECODER_ONLY = (("--decoder", "decoder"), ("--refine", "refine"))


def add_auto_arguments(parser: argparse.ArgumentParser) -> None:
    """The --region and the Segment all settings (defaults: `AutoSettings`, docs/results.md)."""
    group = parser.add_argument_group("segment all (--auto)")
    group.add_argument("--region", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"),
                       help="with --auto: the region to segment, level-0 pixels")
    group.add_argument("--method", choices=METHODS, default=None,
                       help="decoder (default): the instance decoder, one pass a tile; grid: "
                            "a grid of point prompts through the model (slow)")
    group.add_argument("--decoder", default=None,
                       help="instance decoder: a name from `napari-wsi-sam heads list` or a "
                            "decoder .pt file (default: the best held out at the scale)")
    group.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                       help="send each decoder proposal through WSI-SAM for its final outline "
                            "(default: what measured best held out, docs/results.md)")
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

    from ..pipeline.auto_grid import AutoSettings

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
    method = args.method or "decoder"
    wrong = GRID_ONLY if method == "decoder" else DECODER_ONLY
    given = [flag for flag, name in wrong if getattr(args, name) is not None]
    if given:
        other = "grid" if method == "decoder" else "decoder"
        raise PromptError(f"{', '.join(given)} apply to --method {other} only; this run uses "
                          f"--method {method}")
    auto_settings(args)


def decoder_settings(args: argparse.Namespace, *, refine: bool):
    """`DecoderSettings` from the flags given."""
    from ..pipeline.auto_decoder import DecoderSettings

    given = {"duplicate_overlap": args.duplicate_overlap, "min_area_um2": args.min_area,
             "max_area_um2": args.max_area}
    return DecoderSettings(refine=refine, **{k: v for k, v in given.items() if v is not None})


def check_not_auto(args: argparse.Namespace) -> None:
    """--region and the --auto settings without --auto are a mistake, said so."""
    given = [flag for flag, value in (
        ("--region", args.region), ("--points-per-side", args.points_per_side),
        ("--min-score", args.min_score), ("--min-stability", args.min_stability),
        ("--duplicate-overlap", args.duplicate_overlap), ("--min-area", args.min_area),
        ("--max-area", args.max_area), ("--method", args.method),
        ("--decoder", args.decoder), ("--refine", args.refine)) if value is not None]
    if given:
        raise PromptError(f"{', '.join(given)} apply to --auto only (Segment all)")


def resolve_auto(args: argparse.Namespace):
    """(method, choice, hr_mpp, decoder entry or None, refine) of an --auto run.

    The decoder method runs at the decoder's scale unless --hr-mpp or --head say otherwise
    (then a decoder of that scale is needed); the model that refines (and that the grid
    method prompts) is the registry's choice at that scale."""
    from ..model.instance_registry import (
        InstanceDecoderEntry,
        default_instance_decoder,
        find_instance_decoder,
    )
    from ..scale import same_scale, scale_text
    from .model_args import resolve_model

    method = args.method or "decoder"
    if method == "grid":
        choice, hr_mpp = resolve_model(args)
        return method, choice, hr_mpp, None, False
    entry: InstanceDecoderEntry | None
    if args.decoder is not None:
        entry = find_instance_decoder(args.decoder)
    elif args.hr_mpp is None and args.head is None:
        entry = default_instance_decoder()
    else:
        _, wanted = resolve_model(args)
        entry = default_instance_decoder(wanted)
        if entry is None:
            raise PromptError(f"no instance decoder works at {scale_text(wanted)}; train one "
                              "(napari-wsi-sam train --task instances) or use --method grid")
    if entry is None:
        raise PromptError("no instance decoder is installed; train one (napari-wsi-sam train "
                          "--task instances) or use --method grid")
    if args.hr_mpp is not None and not same_scale(args.hr_mpp, entry.hr_mpp):
        raise PromptError(f"the decoder {entry.name} works at {scale_text(entry.hr_mpp)}, not "
                          f"--hr-mpp {args.hr_mpp:g}; leave --hr-mpp out or pick another "
                          "decoder")
    saved = args.hr_mpp
    args.hr_mpp = entry.hr_mpp
    try:
        choice, hr_mpp = resolve_model(args)
    finally:
        args.hr_mpp = saved
    refine = args.refine if args.refine is not None else default_refine(entry)
    return method, choice, hr_mpp, entry, refine


def default_refine(entry) -> bool:
    """Refine by default when the decoder's held-out record says refining won there."""
    heldout = entry.heldout or {}
    return bool(heldout.get("refine_wins", False))


def segment_auto(args: argparse.Namespace) -> int:
    from ..model.build import build_predictor
    from ..model.instance_model import InstanceModel
    from ..pipeline import Provenance, export_objects
    from ..pipeline.auto_decoder import segment_all_decoder
    from ..pipeline.auto_grid import segment_all
    from ..pipeline.auto_region import fit_region
    from ..pipeline.embedding_store import attach as attach_embeddings
    from ..pipeline.objects import image_of
    from ..slide import open_slide
    from ..slide.tissue import tissue_mask
    from ..store.files import open_store

    _, choice, hr_mpp, entry, refine = resolve_auto(args)
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
            if entry is not None:
                model = InstanceModel.load(entry.path, device=predictor.device)
                provenance = (Provenance.of(choice, hr_mpp=hr_mpp) if refine
                              else Provenance("instance-decoder", entry.name, hr_mpp=hr_mpp))
                run = segment_all_decoder(
                    slide, region, model, predictor, store=store, class_name=args.class_name,
                    hr_mpp=hr_mpp, settings=decoder_settings(args, refine=refine),
                    provenance=provenance, tissue=tissue_mask(slide))
                what = f"decoder {entry.name}" + (f" refined by {choice.label}" if refine else "")
                unit = "tile"
            else:
                run = segment_all(slide, region, predictor, store=store,
                                  class_name=args.class_name, hr_mpp=hr_mpp,
                                  settings=auto_settings(args),
                                  provenance=Provenance.of(choice, hr_mpp=hr_mpp))
                what, unit = choice.label, "crop"
            print(f"napari-wsi-sam: segment all with {what} at {hr_mpp:g} µm/px",
                  file=sys.stderr)
            ids: list[int] = []
            found: tuple[int, ...] = ()
            try:
                for step in run:
                    ids += step.ids
                    found = step.found
                    eta = ("" if step.seconds_left is None
                           else f", about {step.seconds_left:.0f} s left")
                    source = "" if entry is not None else f" from {step.points} points"
                    print(f"[{unit} {step.done}/{step.total}] {len(step.ids)} objects{source} "
                          f"({step.added} so far){eta}", file=sys.stderr)
            except KeyboardInterrupt:
                run.close()
                print(f"napari-wsi-sam: interrupted; keeping the {len(ids)} objects done",
                      file=sys.stderr)
            if found:
                print(f"napari-wsi-sam: {len(found)} object(s) were already in the store and "
                      "kept (found again, not repeated)", file=sys.stderr)
            every = sorted({*ids, *found})
            if not every:
                hint = ("check --hr-mpp against the objects' size" if entry is None
                        else "check that the region holds tissue and the decoder's structure")
                raise PromptError(f"no object found in the region {args.region} with {what}; "
                                  f"{hint}")
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
