"""Box prompts on real H&E nuclei through the slide and model code, as a user would run them.

hgsc_nest.jpg (histolytics, 1500x1500 at about 0.5 µm/px) opens as a plain-image slide; a 3x3
grid of concentric crop pairs at 0.25 µm/px HR (40x, what one picks for nuclei) and 0.5 µm/px
LR covers it. Every nucleus of at least MIN_AREA pixels (94% of the 1,294) lies wholly inside
some HR crop; PER_CROP of them, spread evenly over the label order, are prompted there with
their tight box, and the masks are mapped back to slide pixels and compared with the nucleus
mask. The masks come from a segmentation model, not from hand annotation.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_wsi_sam.model.predictor import WsiSamPredictor
from napari_wsi_sam.prompts import Prompt
from napari_wsi_sam.slide import concentric_crops, open_slide

pytestmark = pytest.mark.slow  # the real model on CPU

HR_MPP = 0.25
MIN_AREA = 100
PER_CROP = 12
MARGIN = 8  # slide pixels a box keeps from the HR crop's edge


@pytest.fixture(scope="module")
def nest(asset_path):
    labels = np.load(asset_path("hgsc_nest_inst_mask.npz"))["nuc_raster"]
    with open_slide(asset_path("hgsc_nest.jpg"), mpp=0.5) as slide:
        yield slide, labels


def grid_centres(width: int, field: float) -> list[float]:
    """Crop centres along one axis: fields overlapping by 3 * MARGIN, the last at the edge."""
    centres = np.arange(field / 2, width + 1, field - 3 * MARGIN)
    return sorted({round(min(c, width - field / 2), 3) for c in centres})


def test_box_prompts_on_real_nuclei(nest):
    slide, labels = nest
    predictor = WsiSamPredictor(model="sam", device="cpu")
    slices = ndimage.find_objects(labels)
    areas = np.bincount(labels.ravel())
    field = 1024 * HR_MPP / 0.5
    taken: set[int] = set()
    ious: dict[str, list[float]] = {"sam": [], "wsi-sam": []}
    centres = grid_centres(slide.dimensions[0], field)
    for cy in centres:
        for cx in centres:
            crops = concentric_crops(slide, Prompt.from_points([[cx, cy]]), hr_mpp=HR_MPP,
                                     center=(cx, cy))
            x0, y0 = crops.hr.map.origin
            inside = []
            for label, sl in enumerate(slices, start=1):
                if sl is None or label in taken or areas[label] < MIN_AREA:
                    continue
                box = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
                if (box[0] >= x0 + MARGIN and box[1] >= y0 + MARGIN
                        and box[2] <= x0 + field - MARGIN and box[3] <= y0 + field - MARGIN):
                    inside.append((label, box))
                    taken.add(label)
            chosen = inside[:: max(1, len(inside) // PER_CROP)][:PER_CROP]
            if not chosen:
                continue
            boxes = crops.hr.map.box_to_crop(np.array([b for _, b in chosen], float))
            key = ("hgsc_nest", cx, cy)
            results = {
                "sam": predictor.predict(crops.hr.image, boxes=boxes, model="sam",
                                         cache_key=key),
                "wsi-sam": predictor.predict(crops.hr.image, crops.lr.image, boxes=boxes,
                                             model="wsi-sam", hr_to_lr=crops.hr_to_lr,
                                             cache_key=key),
            }
            # An untrained WSI-SAM head changes nothing: its masks are SAM's.
            np.testing.assert_array_equal(results["sam"].masks, results["wsi-sam"].masks)
            window = crops.hr.map.slide_window(clip=slide.dimensions)
            truth_window = labels[window[1]:window[3], window[0]:window[2]]
            for name, prediction in results.items():
                for (label, _), mask in zip(chosen, prediction.masks, strict=True):
                    on_slide, _ = crops.hr.map.mask_to_slide(mask, window=window)
                    truth = truth_window == label
                    ious[name].append((on_slide & truth).sum() / (on_slide | truth).sum())
    assert len(taken) >= 0.9 * (areas[1:] >= MIN_AREA).sum()  # the grid reaches them all
    means = {name: float(np.mean(values)) for name, values in ious.items()}
    print(f"\nmean IoU over {len(ious['sam'])} nuclei at {HR_MPP} µm/px: {means}")
    assert len(ious["sam"]) >= 80
    assert means["sam"] >= 0.78
    assert means["wsi-sam"] == means["sam"]
