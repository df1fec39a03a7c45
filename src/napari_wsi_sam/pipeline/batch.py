"""Batch refine: many prompts on one slide, grouped by crop, each object stored when done.

Grouping rule: every item's crop centre is its snapped centre (`crop_grid.snapped_center`,
the node of a half-crop grid nearest the prompt, when the prompt fits around it with the
margin); items with the same node share one crop pair, cut once, and all of their prompts run
as one `predictor.predict` call, so the encoder runs once per group ("sam", "medsam") or twice
("wsi-sam": HR and LR). An item that does not fit around a node keeps its own centre and makes
a group of its own.

`refine_batch` is a generator: it yields a `BatchProgress` after each item, and an object is
in the label store before its progress is yielded. Closing the generator (the widget's Cancel,
Ctrl-C in the CLI) stops it at a yield, so every object reported done stays in the store and
none is half-written. All coordinates are level-0 slide pixels (x, y), boxes XYXY.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..annotations.labels import LabelStore
from ..errors import PromptError
from ..prompts import Prompt
from ..scale import LOW_RES
from ..slide import CropPair, Slide
from ..slide.crops import check_prompt_on_slide
from ..windows import Window
from .crop_grid import CropPairCache, snapped_center
from .objects import store_segmented
from .segment import (
    EMPTY_MASK,
    TINY_MASK,
    SegmentedObject,
    crop_pair,
    embedding_key,
    mask_to_level0,
)

logger = logging.getLogger(__name__)

MASK_PROMPT_LOGIT = 10.0
"""Logit of a mask prompt's pixels: +this inside the item's own mask, -this outside."""


@dataclass(frozen=True, eq=False)
class BatchItem:
    """One object to refine.

    prompt : box (and points) in level-0 pixels; for a polygon or ellipse, its bounds as box.
    class_name, color : the object's class and (r, g, b) 0..255; None: the batch default.
    mask : the shape's own mask, ``(mask (h, w) bool, window (x0, y0, x1, y1))`` in level-0
        pixels, used as a mask prompt when the batch asks for mask prompts.
    source : where the item came from (e.g. "feature 3"), for error lines.
    """

    prompt: Prompt
    class_name: str | None = None
    color: tuple[int, int, int] | None = None
    mask: tuple[np.ndarray, Window] | None = None
    source: str = ""

    def describe(self, index: int) -> str:
        return f"item {index}" + (f" ({self.source})" if self.source else "")


@dataclass(frozen=True)
class BatchProgress:
    """After one item: ``done`` of ``total`` items finished; ``object_id`` of the stored object,
    or ``error`` (one line) when the item gave none; ``seconds_left`` estimated from the mean
    time per item so far (None when unknown). ``index`` is the item's position in the
    input sequence (items finish in group order, not input order)."""

    done: int
    total: int
    object_id: int | None
    error: str | None
    seconds_left: float | None
    index: int = -1


@dataclass
class CropGroup:
    """Items sharing one crop pair: ``center`` level-0 (x, y), or None for an item's own
    centre (then ``indices`` holds that one item)."""

    center: tuple[float, float] | None
    indices: list[int] = field(default_factory=list)


def group_by_crop(slide: Slide, items: Sequence[BatchItem], *, hr_mpp: float = 1.0
                  ) -> tuple[list[CropGroup], dict[int, str]]:
    """Groups of item indices sharing a crop pair (in order of first appearance), and the
    items that cannot be run at all (index -> one-line error: off the slide)."""
    slide.require_mpp()
    groups: dict[object, CropGroup] = {}
    errors: dict[int, str] = {}
    for index, item in enumerate(items):
        try:
            check_prompt_on_slide(slide, item.prompt)
        except PromptError as error:
            errors[index] = f"{item.describe(index)}: {error}"
            continue
        center = snapped_center(slide, item.prompt, hr_mpp=hr_mpp)
        own = tuple(float(v) for v in item.prompt.center())
        key: object = ("own", index) if center == own else (round(center[0], 3),
                                                           round(center[1], 3))
        group = groups.setdefault(key, CropGroup(None if center == own else center))
        group.indices.append(index)
    return list(groups.values()), errors


def refine_batch(
    slide: Slide,
    items: Sequence[BatchItem],
    predictor: object,
    *,
    store: LabelStore,
    hr_mpp: float = 1.0,
    model: str | None = None,
    default_class: str = "object",
    default_color: str | tuple = (255, 255, 0),
    use_mask_prompts: bool = False,
    crop_cache: CropPairCache | None = None,
) -> Generator[BatchProgress, None, None]:
    """Refine every item with `predictor` (a `WsiSamPredictor`) and add each object to `store`.

    hr_mpp : HR crop pixel size, µm/px (LR is twice that). model : the predictor's model name,
    None for its default. default_class, default_color : for items without their own.
    use_mask_prompts : give each item's own mask (when it has one) as a mask prompt.
    crop_cache : crop pairs to reuse (and keep) across calls, e.g. the widget's.

    Yields one `BatchProgress` per item. An item that fails (off the slide, empty mask)
    yields its error line and the batch goes on; errors of the slide, weights or store stop it.
    """
    total = len(items)
    groups, errors = group_by_crop(slide, items, hr_mpp=hr_mpp)
    logger.info("batch refine: %d items in %d crop groups, %d off the slide", total,
                len(groups), len(errors))
    started = time.perf_counter()
    done = 0

    def progress(index: int, object_id: int | None, error: str | None) -> BatchProgress:
        nonlocal done
        done += 1
        elapsed = time.perf_counter() - started
        left = elapsed / done * (total - done)
        if error is not None:
            logger.info("%s", error)
        return BatchProgress(done=done, total=total, object_id=object_id, error=error,
                             seconds_left=left, index=index)

    for index, error in errors.items():
        yield progress(index, None, error)
    for group in groups:
        first = items[group.indices[0]].prompt
        crops = crop_pair(slide, first, hr_mpp=hr_mpp, center=group.center,
                          crop_cache=crop_cache)
        for sub in _by_prompt_kind(items, group.indices, use_mask_prompts=use_mask_prompts):
            results = _predict_group(slide, crops, [items[i] for i in sub], predictor,
                                     model=model, use_mask_prompts=use_mask_prompts)
            for index, result in zip(sub, results, strict=True):
                item = items[index]
                if isinstance(result, str):
                    yield progress(index, None, f"{item.describe(index)}: {result}")
                    continue
                object_id = store_segmented(
                    store, result, class_name=item.class_name or default_class,
                    color=item.color if item.color is not None else default_color,
                    prompt=item.prompt)
                yield progress(index, object_id, None)


def _by_prompt_kind(items: Sequence[BatchItem], indices: list[int], *,
                    use_mask_prompts: bool) -> list[list[int]]:
    """Split a crop group into runs of prompts of one shape (box or not, number of points,
    mask prompt or not): one predictor call takes arrays of equal shape."""
    kinds: dict[tuple[bool, int, bool], list[int]] = {}
    for index in indices:
        item = items[index]
        kind = (item.prompt.box is not None, len(item.prompt.points),
                use_mask_prompts and item.mask is not None)
        kinds.setdefault(kind, []).append(index)
    return list(kinds.values())


def _predict_group(slide: Slide, crops: CropPair, items: list[BatchItem], predictor: object,
                   *, model: str | None, use_mask_prompts: bool
                   ) -> list[SegmentedObject | str]:
    """One predictor call for prompts of one kind on one crop pair: an object, or an error
    line, per item."""
    local = [crops.hr.map.prompt_to_crop(item.prompt) for item in items]
    arrays: dict[str, np.ndarray] = {}
    if local[0].box is not None:
        arrays["boxes"] = np.stack([p.box for p in local])  # type: ignore[misc]
    if len(local[0].points):
        arrays["points"] = np.stack([p.points for p in local])
        arrays["point_labels"] = np.stack([p.labels for p in local])
    if use_mask_prompts and items[0].mask is not None:
        arrays["mask_prompts"] = np.stack([mask_prompt(crops, item.mask)  # type: ignore[arg-type]
                                           for item in items])
    prediction = predictor.predict(  # type: ignore[attr-defined]
        crops.hr.image, crops.lr.image, hr_to_lr=crops.hr_to_lr,
        cache_key=embedding_key(slide, crops), model=model, **arrays)
    out: list[SegmentedObject | str] = []
    for k, item in enumerate(items):
        crop_mask = prediction.masks[k] & crops.hr.valid
        placed = mask_to_level0(crops, crop_mask, dimensions=slide.dimensions)
        if placed is None:
            out.append(EMPTY_MASK if not crop_mask.any() else TINY_MASK)
            continue
        mask, window = placed
        out.append(SegmentedObject(mask=mask, window=window, score=float(prediction.scores[k]),
                                   model=prediction.model, prompt=item.prompt, crops=crops,
                                   crop_mask=crop_mask, score_kind=prediction.score_kind))
    return out


def mask_prompt(crops: CropPair, mask: tuple[np.ndarray, Window]) -> np.ndarray:
    """A level-0 mask ``(mask (h, w) bool, window)`` as SAM mask-prompt logits over the HR
    crop: (256, 256) float32, +`MASK_PROMPT_LOGIT` where a cell's centre is on the mask."""
    values, (x0, y0, x1, y1) = mask
    values = np.asarray(values, dtype=bool)
    if values.shape != (y1 - y0, x1 - x0):
        raise PromptError(f"mask shape {values.shape} does not match its window "
                          f"{(x0, y0, x1, y1)}")
    cmap = crops.hr.map
    cell = crops.hr.image.shape[1] / LOW_RES
    centres = (np.arange(LOW_RES) + 0.5) * cell
    cols = np.floor(cmap.origin[0] + centres * cmap.scale[0]).astype(np.int64) - x0
    rows = np.floor(cmap.origin[1] + centres * cmap.scale[1]).astype(np.int64) - y0
    ok_c = (cols >= 0) & (cols < values.shape[1])
    ok_r = (rows >= 0) & (rows < values.shape[0])
    inside = values[np.ix_(rows.clip(0, values.shape[0] - 1), cols.clip(0, values.shape[1] - 1))]
    inside &= ok_r[:, None] & ok_c[None, :]
    return np.where(inside, MASK_PROMPT_LOGIT, -MASK_PROMPT_LOGIT).astype(np.float32)
