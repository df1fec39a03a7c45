"""One prompt on a slide -> one mask in level-0 pixels.

The widget and the CLI both call `segment_prompt`, so anything the widget does a script can
do. Masks never leak into padding: the HR crop's valid mask is applied before mapping back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import PromptError
from ..prompts import Prompt
from ..slide import CropPair, Slide, concentric_crops
from ..slide.crop_grid import CropPairCache, snapped_center
from ..slide.crops import fit_prompt
from ..windows import Window

logger = logging.getLogger(__name__)


EMPTY_MASK = ("the model found no object for this prompt; draw a tighter box or add a positive "
              "point on the object")
TINY_MASK = "the object is smaller than one slide pixel; zoom in or draw a larger box"


@dataclass(frozen=True, eq=False)
class SegmentedObject:
    """One object: ``mask`` (h, w) bool over ``window`` = (x0, y0, x1, y1) level-0 pixels
    (x1, y1 exclusive; the window is the mask's tight bounding box), with the model's score
    (``score_kind``: "predicted_iou" or "stability", `model.registry.SCORE_NAMES`).
    ``crop_mask`` (S, S) bool is the same object on the HR crop grid, for display."""

    mask: np.ndarray
    window: Window
    score: float
    model: str
    prompt: Prompt
    crops: CropPair
    crop_mask: np.ndarray
    score_kind: str = "predicted_iou"

    @property
    def area_px(self) -> int:
        return int(self.mask.sum())

    def area_um2(self, mpp: tuple[float, float]) -> float:
        return self.area_px * mpp[0] * mpp[1]


def segment_prompt(
    slide: Slide,
    prompt: Prompt,
    predictor: object,
    *,
    hr_mpp: float = 1.0,
    model: str | None = None,
    threshold: float = 0.0,
    snap: bool = True,
    crop_cache: CropPairCache | None = None,
) -> SegmentedObject:
    """Cut the concentric crops for `prompt`, run `predictor` (a `WsiSamPredictor`) on them,
    and return the mask in level-0 pixels.

    With `snap`, the crops centre on the nearest node of a half-crop grid (`crop_grid`), so
    nearby prompts share crops; the embedding cache is keyed by (slide path, crop centre, HR
    mpp) and `crop_cache` keeps the pixels, so a second prompt there runs only the decoder.
    Raises PromptError when the mask is empty.
    """
    prompt = fit_prompt(slide, prompt)  # cut to the slide, or refused in one line
    center = snapped_center(slide, prompt, hr_mpp=hr_mpp) if snap else None
    crops = crop_pair(slide, prompt, hr_mpp=hr_mpp, center=center, crop_cache=crop_cache)
    if crops.mpp_raised:
        logger.info("the prompt needed a coarser HR field: %.3f um/px instead of %.3f",
                    crops.hr_mpp, crops.hr_mpp_requested)
    local = crops.hr.map.prompt_to_crop(prompt)
    prompts: dict[str, np.ndarray] = {}
    if local.box is not None:
        prompts["boxes"] = local.box[None, :]
    if len(local.points):
        prompts["points"] = local.points[None, :, :]
        prompts["point_labels"] = local.labels[None, :]
    key = embedding_key(slide, crops)
    prediction = predictor.predict(  # type: ignore[attr-defined]
        crops.hr.load, crops.lr.load, hr_to_lr=crops.hr_to_lr, cache_key=key,
        model=model, threshold=threshold, **prompts,
    )
    crop_mask = prediction.masks[0] & crops.hr.valid
    if not crop_mask.any():
        raise PromptError(EMPTY_MASK)
    placed = mask_to_level0(crops, crop_mask, dimensions=slide.dimensions)
    if placed is None:
        raise PromptError(TINY_MASK)
    mask, tight = placed
    return SegmentedObject(mask=mask, window=tight, score=float(prediction.scores[0]),
                           model=prediction.model, prompt=prompt, crops=crops,
                           crop_mask=crop_mask, score_kind=prediction.score_kind)


def crop_pair(slide: Slide, prompt: Prompt, *, hr_mpp: float,
              center: tuple[float, float] | None,
              crop_cache: CropPairCache | None = None) -> CropPair:
    """The concentric crops around `center` (level-0 x, y; None: the prompt's own centre).

    Pairs at a given centre are kept in `crop_cache` under (slide path, centre, HR mpp), the
    same key for every caller (widget, batch, CLI), so they are cut once. Their pixels are
    read only if the encoder needs them (not for a node whose embeddings are stored), so use
    them while the slide is open.
    """
    if center is None:
        return concentric_crops(slide, prompt, hr_mpp=hr_mpp, lazy=True)
    pair_key = (str(slide.path), round(center[0], 3), round(center[1], 3), hr_mpp)
    cache = crop_cache if crop_cache is not None else CropPairCache(0)
    return cache.get_or_cut(pair_key, lambda: concentric_crops(
        slide, prompt, hr_mpp=hr_mpp, center=center, lazy=True))


def embedding_key(slide: Slide, crops: CropPair) -> tuple:
    """The predictor's embedding-cache key of a crop pair: (slide path, centre, HR mpp)."""
    return (str(slide.path), tuple(round(c, 3) for c in crops.center), round(crops.hr_mpp, 6))


def mask_to_level0(crops: CropPair, crop_mask: np.ndarray, *, dimensions: tuple[int, int]
                   ) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """An HR-crop mask (S, S) bool -> (mask (h, w) bool, tight window (x0, y0, x1, y1)) in
    level-0 pixels of a slide of `dimensions` (width, height); None when nothing is left.

    Padding never leaks: the mask is cut to ``crops.hr.valid`` and the window to the slide.
    """
    crop_mask = np.asarray(crop_mask, dtype=bool) & crops.hr.valid
    if not crop_mask.any():
        return None
    window = crops.hr.map.slide_window(clip=dimensions)
    mask, window = crops.hr.map.mask_to_slide(crop_mask, window=window)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    tight = (window[0] + int(cols[0]), window[1] + int(rows[0]),
             window[0] + int(cols[-1]) + 1, window[1] + int(rows[-1]) + 1)
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], tight
