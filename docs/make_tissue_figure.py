"""Make docs/images/tissue_nodes.png: what `precompute` encodes on the real CMU SVS.

Run: ``.venv/bin/python docs/make_tissue_figure.py [--hr-mpp 1.0] [--out ...]``

The slide's thumbnail with its tissue mask tinted, the crop-grid nodes (half an HR crop
apart) as dots, and the cell of each node that holds tissue outlined: those nodes are
precomputed; a prompt snaps to the node of the cell its centre is in.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from napari_wsi_sam.assets import fetch
from napari_wsi_sam.slide import open_slide
from napari_wsi_sam.slide.crop_grid import grid_nodes, grid_step
from napari_wsi_sam.slide.tissue import tissue_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hr-mpp", type=float, default=1.0)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "images" / "tissue_nodes.png")
    args = parser.parse_args()
    path = fetch("cmu_small_region.svs")["cmu_small_region.svs"]
    with open_slide(path) as slide:
        tissue = tissue_mask(slide)
        sx, sy = tissue.scale
        h, w = tissue.mask.shape
        level = next(i for i, (lw, _) in enumerate(slide.level_dimensions) if lw == w)
        rgb = slide.read_window(level, x0=0, y0=0, x1=w, y1=h).astype(np.float32)
        tint = np.array([40, 160, 255], np.float32)
        rgb[tissue.mask] = 0.65 * rgb[tissue.mask] + 0.35 * tint
        image = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        step_x, step_y = grid_step(slide, hr_mpp=args.hr_mpp)
        on_tissue = set(grid_nodes(slide, hr_mpp=args.hr_mpp, tissue=tissue))
        for x, y in grid_nodes(slide, hr_mpp=args.hr_mpp):
            cx, cy = x / sx, y / sy
            if (x, y) in on_tissue:
                half_x, half_y = step_x / 2 / sx, step_y / 2 / sy
                draw.rectangle([cx - half_x, cy - half_y, cx + half_x, cy + half_y],
                               outline=(230, 60, 20), width=3)
                draw.ellipse([cx - 9, cy - 9, cx + 9, cy + 9], fill=(230, 60, 20))
            else:
                draw.ellipse([cx - 6, cy - 6, cx + 6, cy + 6], outline=(120, 120, 120), width=2)
    image.thumbnail((640, 860))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out}: {len(on_tissue)} nodes on tissue ({tissue.fraction:.0%} tissue)")


if __name__ == "__main__":
    main()
