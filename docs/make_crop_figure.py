"""Make docs/images/hr_lr_pair.png: the HR and LR crops of one prompt on the real CMU SVS.

Run: ``.venv/bin/python docs/make_crop_figure.py [--out docs/images/hr_lr_pair.png]``

Left: the HR crop (1024 px at 1.0 µm/px), right: the LR crop (1024 px at 2.0 µm/px), same
centre. The prompt (box and a positive point) is drawn in both from its level-0 coordinates;
the LR crop shows the HR field of view (dashed) and hatches its padding (``valid == False``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from napari_wsi_sam.assets import fetch
from napari_wsi_sam.prompts import Prompt
from napari_wsi_sam.slide import concentric_crops, open_slide
from napari_wsi_sam.slide.overlay import FIELD, draw_box, draw_prompt

PANEL = 640
CAPTION = 64


def hatch_padding(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Grey diagonal hatching where the crop is padding."""
    rows, cols = np.indices(valid.shape)
    stripes = ((rows + cols) // 16) % 2 == 0
    out = image.copy()
    out[~valid & stripes] = (205, 205, 205)
    return out


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (has µ) when installed, else Pillow's default font."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size)


def panel(image: np.ndarray, title: str, subtitle: str) -> Image.Image:
    canvas = Image.new("RGB", (PANEL, PANEL + CAPTION), "white")
    canvas.paste(Image.fromarray(image).resize((PANEL, PANEL), Image.Resampling.LANCZOS),
                 (0, CAPTION))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 8), title, fill=(0, 0, 0), font=font(22))
    draw.text((8, 38), subtitle, fill=(60, 60, 60), font=font(16))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "images" / "hr_lr_pair.png")
    args = parser.parse_args()
    path = fetch("cmu_small_region.svs")["cmu_small_region.svs"]
    prompt = Prompt(box=[880, 1330, 1330, 1660], points=[[1090, 1480]], labels=[1])
    with open_slide(path) as slide:
        pair = concentric_crops(slide, prompt, hr_mpp=1.0, size=1024)
    hr = draw_prompt(pair.hr.image.copy(), pair.hr.map.prompt_to_crop(prompt), radius=9)
    lr = hatch_padding(pair.lr.image, pair.lr.valid)
    lr = draw_prompt(lr, pair.lr.map.prompt_to_crop(prompt), radius=6)
    field = pair.lr.map.box_to_crop(pair.hr.map.box_to_slide(np.array([0, 0, 1024, 1024.0])))
    draw_box(lr, field, color=FIELD, width=4, dashed=True)
    cx, cy = pair.center
    left = panel(hr, f"HR: {pair.hr_mpp:g} µm/px, level {pair.hr.level}",
                 f"1024 px = {1024 * pair.hr_mpp:.0f} µm, centre ({cx:.0f}, {cy:.0f}) level-0 px")
    right = panel(lr, f"LR: {pair.lr.mpp:g} µm/px, level {pair.lr.level}",
                  f"dashed: HR field of view; hatched: padding ({1 - pair.lr.valid_fraction:.0%})")
    figure = Image.new("RGB", (2 * PANEL + 24, PANEL + CAPTION), "white")
    figure.paste(left, (0, 0))
    figure.paste(right, (PANEL + 24, 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.out, optimize=True)


if __name__ == "__main__":
    main()
