"""``napari-wsi-sam info`` and ``napari-wsi-sam crops``: look at a slide and at the crops a
prompt gets, without Qt or a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..errors import WsiSamError
from ..prompts import Prompt
from ..slide import CropPair, Slide, concentric_crops, open_slide
from ..slide.overlay import FIELD, draw_box, draw_prompt
from . import args as argtypes


def register(subparsers: argparse._SubParsersAction) -> None:
    info = subparsers.add_parser("info", help="levels, pixel size and associated images of a slide")
    info.add_argument("slide", type=Path, help="slide or image file")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.add_argument("--mpp", type=argtypes.slide_mpp,
                      help="pixel size in µm/px, overriding the file's")
    argtypes.add_backend_argument(info)
    info.set_defaults(func=_info)

    crops = subparsers.add_parser(
        "crops", help="cut the concentric HR/LR crops of a prompt and save them with the prompt",
        description="Prompts are level-0 pixels, x then y. Writes hr.png, lr.png, crops.json.")
    crops.add_argument("slide", type=Path, help="slide or image file")
    group = crops.add_mutually_exclusive_group(required=True)
    group.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"),
                       help="box prompt, level-0 pixels")
    group.add_argument("--point", type=float, nargs=2, action="append", metavar=("X", "Y"),
                       help="positive point prompt, level-0 pixels (repeat for more)")
    crops.add_argument("--hr-mpp", type=argtypes.hr_mpp, default=1.0,
                       help="HR crop µm/px (default 1.0)")
    crops.add_argument("--size", type=argtypes.crop_size, default=1024,
                       help="crop side in px (default 1024)")
    crops.add_argument("--mpp", type=argtypes.slide_mpp,
                       help="slide pixel size in µm/px, overriding the file's")
    argtypes.add_backend_argument(crops)
    crops.add_argument("--out", type=Path, required=True, help="folder for the outputs")
    crops.set_defaults(func=_crops)


def slide_info(slide: Slide) -> dict:
    """Everything `info` reports, as JSON-ready values."""
    levels = []
    for i, (w, h) in enumerate(slide.level_dimensions):
        mpp = slide.level_mpp(i) if slide.mpp is not None else None
        levels.append({"level": i, "width": w, "height": h,
                       "downsample": round(slide.downsamples[i], 6),
                       "mpp": None if mpp is None else [round(v, 6) for v in mpp],
                       "virtual": i >= slide.native_level_count,
                       "tile": [int(c) for c in slide.levels[i].chunksize[:2]]})
    equivalent = None if slide.mpp is None else round(10.0 / slide.mpp[0], 3)
    return {"path": str(slide.path), "backend": slide.backend, "vendor": slide.vendor,
            "width": slide.dimensions[0],
            "height": slide.dimensions[1], "mpp": None if slide.mpp is None else list(slide.mpp),
            "objective_power": slide.objective_power, "equivalent_magnification": equivalent,
            "levels": levels,
            "associated": {k: [int(a.shape[1]), int(a.shape[0])]
                           for k, a in slide.associated.items()}}


def _info(args: argparse.Namespace) -> int:
    with open_slide(args.slide, mpp=args.mpp, backend=args.backend) as slide:
        info = slide_info(slide)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    mpp = "none (give one with --mpp)"
    if info["mpp"] is not None:
        mx, my = info["mpp"]
        mpp = f"{mx:.4g} x {my:.4g} µm/px (~{info['equivalent_magnification']:g}x)"
    power = info["objective_power"]
    print(f"{info['path']}\n  backend: {info['backend']}\n  vendor: {info['vendor']}\n"
          f"  size: {info['width']} x "
          f"{info['height']} px\n  pixel size: {mpp}\n  objective: "
          f"{'unknown' if power is None else f'{power:g}x'}\n  levels:")
    for lvl in info["levels"]:
        lmpp = "-" if lvl["mpp"] is None else f"{lvl['mpp'][0]:.4g} µm/px"
        kind = "virtual" if lvl["virtual"] else "native"
        print(f"    {lvl['level']}: {lvl['width']} x {lvl['height']}  downsample "
              f"{lvl['downsample']:g}  {lmpp}  {kind}, chunks {lvl['tile'][1]}x{lvl['tile'][0]}")
    names = ", ".join(f"{k} ({w}x{h})" for k, (w, h) in info["associated"].items()) or "none"
    print(f"  associated images: {names}")
    return 0


def _crops(args: argparse.Namespace) -> int:
    prompt = Prompt.from_box(args.box) if args.box is not None else Prompt.from_points(args.point)
    with open_slide(args.slide, mpp=args.mpp, backend=args.backend) as slide:
        pair = concentric_crops(slide, prompt, hr_mpp=args.hr_mpp, size=args.size)
    write_crops(pair, prompt, args.out, slide_path=args.slide)
    note = " (raised to fit the prompt)" if pair.mpp_raised else ""
    print(f"HR {pair.hr_mpp:.4g} µm/px{note}, level {pair.hr.level}, valid "
          f"{pair.hr.valid_fraction:.1%}; LR {pair.lr.mpp:.4g} µm/px, level {pair.lr.level}, "
          f"valid {pair.lr.valid_fraction:.1%}; wrote {args.out}")
    return 0


def make_output_folder(out: Path) -> None:
    """Create `out`, or fail with one line that says what to do."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WsiSamError(f"cannot create output folder {out} ({err.strerror}); "
                          "give a writable --out") from err


def write_crops(pair: CropPair, prompt: Prompt, out: Path, *, slide_path: Path) -> dict:
    """Write hr.png and lr.png (prompt drawn in both, the HR field dashed in LR) and
    crops.json (maps, mpp, padding); returns the JSON record."""
    from PIL import Image

    make_output_folder(out)
    size = pair.hr.image.shape[0]
    hr = draw_prompt(pair.hr.image.copy(), pair.hr.map.prompt_to_crop(prompt))
    lr = draw_prompt(pair.lr.image.copy(), pair.lr.map.prompt_to_crop(prompt))
    hr_field = pair.lr.map.box_to_crop(pair.hr.map.box_to_slide(
        np.array([0.0, 0.0, size, size])))
    draw_box(lr, hr_field, color=FIELD, width=2, dashed=True)
    Image.fromarray(hr).save(out / "hr.png")
    Image.fromarray(lr).save(out / "lr.png")
    record = {"slide": str(slide_path), "prompt": prompt.to_dict(),
              "hr_field_in_lr": [round(v, 4) for v in hr_field.tolist()], **pair.to_dict()}
    (out / "crops.json").write_text(json.dumps(record, indent=2))
    return record
