"""Draw docs/images/results_overlay.png: held-out nuclei with the ground truth, SAM's and
WSI-SAM's masks from the same noisy boxes (the paper's Figures 3, 5 and 6, on our data).

Run: ``.venv/bin/python docs/make_results_figure.py [--head HEAD.pt]`` (default: the shipped head)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.ndimage import binary_dilation
from skimage.segmentation import find_boundaries

from napari_wsi_sam.evaluation.runner import _truths, dice
from napari_wsi_sam.model.predictor import WsiSamPredictor
from napari_wsi_sam.model.registry import shipped_heads
from napari_wsi_sam.pipeline.segment import crop_pair, embedding_key
from napari_wsi_sam.prompts import Prompt
from napari_wsi_sam.slide import open_slide
from napari_wsi_sam.slide.crop_grid import snapped_center
from napari_wsi_sam.train.datasets import load_data
from napari_wsi_sam.train.prompt_noise import noisy_box

HERE = Path(__file__).parent
CENTRE = (768.0, 768.0)
COLOURS = {"ground truth": (0, 220, 0), "SAM": (40, 120, 255), "WSI-SAM": (255, 0, 200)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "images" / "results_overlay.png")
    args = parser.parse_args()
    image = load_data("builtin:hgsc_stromal")[0]
    head = args.head or shipped_heads()[0].path
    sam = WsiSamPredictor(model="sam", device="cpu")
    wsi = WsiSamPredictor(model="wsi-sam", device="cpu", head=head)
    with open_slide(image.image, mpp=image.mpp) as slide:
        some = [o for o in image.objects if snapped_center(
            slide, Prompt.from_box(o.geometry.bounds), hr_mpp=0.25) == CENTRE]
        pair = crop_pair(slide, Prompt.from_box(some[0].geometry.bounds), hr_mpp=0.25,
                         center=CENTRE)
        truth = _truths([(o, None) for o in some], pair, 16)
        boxes = np.stack([noisy_box(w.box, np.random.default_rng([0, 0, o.id, 0]))
                          for o, w in truth])
        key = embedding_key(slide, pair)
        masks = {"SAM": sam.predict(pair.hr.image, boxes=boxes, cache_key=key).masks,
                 "WSI-SAM": wsi.predict(pair.hr.image, pair.lr.image, boxes=boxes,
                                        hr_to_lr=pair.hr_to_lr, cache_key=key).masks}
    dense = np.stack([w.dense(1024) for _, w in truth])
    scores = {name: np.mean([dice(m, t) for m, t in zip(found, dense, strict=True)])
              for name, found in masks.items()}
    fig = Figure(figsize=(12, 4.3), dpi=110)
    FigureCanvasAgg(fig)
    panels = [("ground truth", dense), ("SAM", masks["SAM"]), ("WSI-SAM", masks["WSI-SAM"])]
    for i, (name, found) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        shown = pair.hr.image[256:768, 256:768].copy()
        edge = binary_dilation(find_boundaries(found.any(axis=0)[256:768, 256:768],
                                               mode="inner"), iterations=2)
        shown[edge] = COLOURS[name]
        ax.imshow(shown)
        for x0, y0, x1, y1 in boxes:
            ax.add_patch(_rect(x0 - 256, y0 - 256, x1 - x0, y1 - y0))
        title = name if name == "ground truth" else f"{name}: mean Dice {scores[name]:.3f}"
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.suptitle(f"held-out hgsc_stromal, {len(truth)} nuclei of one crop pair, the same noisy "
                 "boxes (yellow); centre 512² of the 1024² HR crop at 0.25 µm/px", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(args.out, {k: round(v, 4) for k, v in scores.items()})


def _rect(x, y, w, h):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, fill=False, edgecolor="yellow", linewidth=0.6)


if __name__ == "__main__":
    main()
