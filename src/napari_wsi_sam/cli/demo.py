"""``napari-wsi-sam demo``: the main job without a display.

One box on the slide goes through the whole pipeline (crops, encoder, decoder, mask back in
level-0 pixels, QuPath GeoJSON); everything a person would look at is written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..assets import SAMPLE_SLIDE
from ..errors import PromptError
from ..formats import AnnotationObject, write_geojson
from ..pipeline import SegmentedObject, segment_prompt
from ..polygons import mask_to_geometry
from ..prompts import Prompt
from ..slide import CropPairCache, open_slide
from . import args as argtypes
from .model_args import add_model_arguments, resolve_model
from .slide import make_output_folder, slide_info, write_crops

SAMPLE_BOX = (1185.0, 1980.0, 1345.0, 2185.0)
"""A hair follicle in the sample slide (level-0 px, XYXY)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="segment one box on a slide headless and write what there is to see")
    parser.add_argument("slide", type=Path, help="slide file")
    parser.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"),
                        help="box in level-0 pixels (default: a follicle of the sample slide)")
    add_model_arguments(parser)
    parser.add_argument("--mpp", type=argtypes.slide_mpp, default=None,
                        help="µm/px of the slide, when it does not record one")
    argtypes.add_backend_argument(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ..model.build import build_predictor
    from ..model.registry import SCORE_NAMES

    if args.box is None and args.slide.name != SAMPLE_SLIDE:
        raise PromptError(f"{args.slide.name} is not the sample slide; give --box X0 Y0 X1 Y1")
    prompt = Prompt.from_box(args.box or SAMPLE_BOX)
    choice, hr_mpp = resolve_model(args)
    make_output_folder(args.out)
    with open_slide(args.slide, mpp=args.mpp, backend=args.backend) as slide:
        info = slide_info(slide)
        (args.out / "slide.json").write_text(json.dumps(info, indent=2))
        predictor = build_predictor(choice, device=args.device)
        crop_cache = CropPairCache()
        started = time.perf_counter()
        obj = segment_prompt(slide, prompt, predictor, hr_mpp=hr_mpp,
                             crop_cache=crop_cache)
        cold = time.perf_counter() - started
        # The same object again with a positive click in the box's middle, as a user would
        # refine it: the crops and embeddings are cached, only the decoder runs.
        click = Prompt(box=prompt.box, points=prompt.center()[None, :],
                       labels=np.ones(1, dtype=np.int64))
        started = time.perf_counter()
        segment_prompt(slide, click, predictor, hr_mpp=hr_mpp, crop_cache=crop_cache)
        warm = time.perf_counter() - started
        crops = write_crops(obj.crops, prompt, args.out, slide_path=args.slide)
        _write_mask_images(obj, args.out)
        mpp = slide.require_mpp()
        write_geojson([AnnotationObject(
            id=1, geometry=mask_to_geometry(obj.mask, obj.window), class_name="object",
            color=(255, 255, 0), properties={"model": choice.spec, "score": obj.score,
                                              "score_kind": obj.score_kind})],
            args.out / "objects.geojson", mpp=mpp)
    result = {
        "model": choice.spec, "device": str(predictor.device), "score": round(obj.score, 4),
        "score_kind": obj.score_kind,
        "window_level0": list(obj.window), "area_px": obj.area_px,
        "area_um2": round(obj.area_um2(mpp), 1), "hr_mpp": crops["hr_mpp"],
        "seconds_first_prompt": round(cold, 3), "seconds_refining_click": round(warm, 3),
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"{args.slide.name}: {choice.label} on {predictor.device} at {hr_mpp:g} µm/px, "
          f"object of {result['area_um2']:.0f} µm² ({SCORE_NAMES[obj.score_kind]} "
          f"{obj.score:.2f}) in {cold:.2f} s, "
          f"a refining click {warm:.2f} s (cached crops and embeddings); wrote {args.out}")
    return 0


def _write_mask_images(obj: SegmentedObject, out: Path) -> None:
    """mask.png: the object in level-0 pixels; overlay.png: its outline on the HR crop."""
    from PIL import Image
    from skimage.segmentation import find_boundaries

    from ..slide.overlay import draw_prompt

    Image.fromarray((obj.mask * 255).astype(np.uint8)).save(out / "mask.png")
    hr = obj.crops.hr
    overlay = draw_prompt(hr.image.copy(), hr.map.prompt_to_crop(obj.prompt))
    overlay[find_boundaries(obj.crop_mask, mode="thick")] = (40, 220, 40)
    Image.fromarray(overlay).save(out / "overlay.png")
