"""Batch refine: many prompts on one slide, grouped by crop, each object stored when done.

Grouping rule: every item's crop centre is its snapped centre (`crop_grid.snapped_center`,
the node of a half-crop grid nearest the prompt, when the prompt fits around it with the
margin); items with the same node share one crop pair, cut once, so the encoder runs once per
group ("sam", "medsam") or twice ("wsi-sam": HR and LR). An item that does not fit around a
node keeps its own centre and makes a group of its own. Inside a group, prompts go to the
decoder `decoder_batch` at a time, and each object is stored as soon as its batch is done, so
memory stays bounded however many prompts a group holds.

`refine_batch` is a generator: it yields a `BatchProgress` after each item, and an object is
in the object store (one transaction) before its progress is yielded. Closing the generator
(the widget's Cancel, Ctrl-C in the CLI) stops it at a yield: every object reported done stays
in the store and none is half-written. Each new object records a resume key; a rerun skips the
items already done (``skip_done``), or redoes them as new versions (``force``). All
coordinates are level-0 slide pixels (x, y), boxes XYXY.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import shapely
from shapely.geometry import box as shapely_box

from ..errors import PromptError
from ..polygons import Areal, polygonal, rasterize
from ..prompts import Prompt
from ..scale import LOW_RES
from ..slide import CropPair, Slide
from ..slide.crop_grid import CropPairCache, snapped_center
from ..slide.crops import fit_prompt
from ..store.object_store import ObjectStore
from .items import BatchItem, Provenance, resume_key
from .objects import Outline, refine_stored, store_segmented
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
DECODER_BATCH = 16
"""Prompts per decoder call in a batch: bounds memory to a few (1024, 1024) logit maps."""


@dataclass(frozen=True)
class BatchProgress:
    """After one item: ``done`` of ``total`` items finished; ``object_id`` of the stored (or,
    when ``skipped``, the already stored) object, or ``error`` (one line) when the item gave
    none; ``seconds_left`` estimated from the mean time per item so far (None when unknown).
    ``index`` is the item's position in the input sequence (items finish in group order)."""

    done: int
    total: int
    object_id: int | None
    error: str | None
    seconds_left: float | None
    index: int = -1
    skipped: bool = False
    reason: str | None = None
    """The error without the item's description (one line)."""


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
    groups, errors, _ = _fitted_groups(slide, items, hr_mpp=hr_mpp)
    return groups, errors


def _fitted_groups(slide: Slide, items: Sequence[BatchItem], *, hr_mpp: float
                   ) -> tuple[list[CropGroup], dict[int, str], dict[int, BatchItem]]:
    """`group_by_crop`, and each runnable item fitted to the slide (`fit_item`)."""
    slide.require_mpp()
    groups: dict[object, CropGroup] = {}
    errors: dict[int, str] = {}
    fitted: dict[int, BatchItem] = {}
    for index, item in enumerate(items):
        try:
            fitted[index] = item = fit_item(slide, item)
        except PromptError as error:
            errors[index] = str(error)
            continue
        center = snapped_center(slide, item.prompt, hr_mpp=hr_mpp)
        own = tuple(float(v) for v in item.prompt.center())
        key: object = ("own", index) if center == own else (round(center[0], 3),
                                                           round(center[1], 3))
        group = groups.setdefault(key, CropGroup(None if center == own else center))
        group.indices.append(index)
    return list(groups.values()), errors, fitted


def fit_item(slide: Slide, item: BatchItem) -> BatchItem:
    """The item cut to the slide: its outline (if any) clipped and its box the outline's
    bounds, then the prompt fitted (`slide.crops.fit_prompt`). One-line PromptError when
    nothing of it is on the slide."""
    geometry = item.geometry
    if geometry is not None:
        width, height = slide.dimensions
        frame = shapely_box(0, 0, width, height)
        if not frame.covers(geometry):
            cut = polygonal(shapely.intersection(geometry, frame))
            if cut.is_empty:
                raise PromptError(f"the outline at {_rounded(geometry.bounds)} lies "
                                  f"outside the {width}x{height} px slide {slide.path.name}")
            item = replace(item, geometry=cut, prompt=Prompt.from_box(cut.bounds))
    prompt = fit_prompt(slide, item.prompt)
    return item if prompt is item.prompt else replace(item, prompt=prompt)


def _rounded(bounds: Sequence[float]) -> list[float]:
    return [float(f"{v:.7g}") for v in bounds]


def refine_batch(
    slide: Slide,
    items: Sequence[BatchItem],
    predictor: object,
    *,
    store: ObjectStore,
    hr_mpp: float = 1.0,
    provenance: Provenance | None = None,
    default_class: str = "object",
    use_mask_prompts: bool = False,
    crop_cache: CropPairCache | None = None,
    group: str | None = None,
    skip_done: bool = True,
    force: bool = False,
    decoder_batch: int = DECODER_BATCH,
) -> Generator[BatchProgress, None, None]:
    """Refine every item with `predictor` (a `WsiSamPredictor`) and store each object.

    hr_mpp : HR crop pixel size, µm/px (LR is twice that). provenance : model, head and
    settings recorded with each object (default: the predictor's model name).
    default_class : for items without their own. use_mask_prompts : give each item's own
    mask (when it has one) as a mask prompt. crop_cache : crop pairs to reuse across calls.
    group : change-log group, so one undo removes the whole batch (default: a new one).
    skip_done : skip items whose resume key is on a live object; force : redo those as new
    versions of their objects. Items with an ``object_id`` become new versions of it.

    Yields one `BatchProgress` per item. An item that fails (off the slide, empty mask)
    yields its error line and the batch goes on; errors of the slide, weights or store stop it.
    """
    total = len(items)
    provenance = provenance or Provenance(getattr(predictor, "model", "sam"), hr_mpp=hr_mpp)
    group = group or store.new_group()
    plan = plan_batch(slide, items, store, provenance=provenance, hr_mpp=hr_mpp,
                      use_mask_prompts=use_mask_prompts, look_up=skip_done or force)
    items = plan.items
    started = time.perf_counter()
    count = 0

    def progress(index: int, object_id: int | None, reason: str | None, *,
                 skipped: bool = False) -> BatchProgress:
        nonlocal count
        count += 1
        elapsed = time.perf_counter() - started
        left = elapsed / count * (total - count)
        error = None if reason is None else f"{items[index].describe(index)}: {reason}"
        if error is not None:
            logger.info("%s", error)
        return BatchProgress(done=count, total=total, object_id=object_id, error=error,
                             seconds_left=left, index=index, skipped=skipped, reason=reason)

    for index, reason in plan.errors.items():
        yield progress(index, None, reason)
    for crop_group in plan.groups:
        todo = plan.todo(crop_group, force=force)
        running = set(todo)
        for index in crop_group.indices:
            if index not in running:
                yield progress(index, plan.done_before[plan.keys[index]], None, skipped=True)
        if not todo:
            continue
        for results in segment_group(slide, items, todo, predictor, hr_mpp=hr_mpp,
                                     center=crop_group.center, crop_cache=crop_cache,
                                     use_mask_prompts=use_mask_prompts,
                                     decoder_batch=decoder_batch):
            for index, result in results:
                if isinstance(result, str):
                    yield progress(index, None, result)
                    continue
                object_id = store_result(store, plan, index, result, provenance=provenance,
                                         default_class=default_class, group=group)
                yield progress(index, object_id, None)


@dataclass
class BatchPlan:
    """What a batch will do: the items fitted to the slide, their resume keys, the objects
    earlier runs made for them (key -> id), the crop groups and the items that cannot run
    (index -> one-line reason)."""

    items: list[BatchItem]
    keys: list[str]
    done_before: dict[str, int]
    groups: list[CropGroup]
    errors: dict[int, str]

    def todo(self, group: CropGroup, *, force: bool) -> list[int]:
        """The group's items still to segment (all of them with `force`)."""
        return [i for i in group.indices if force or self.keys[i] not in self.done_before]

    def outstanding(self, *, force: bool) -> int:
        return sum(len(self.todo(g, force=force)) for g in self.groups)


def plan_batch(slide: Slide, items: Sequence[BatchItem], store: ObjectStore, *,
               provenance: Provenance, hr_mpp: float, use_mask_prompts: bool,
               look_up: bool = True) -> BatchPlan:
    """Fit, key and group the items; with `look_up`, find the ones earlier runs stored."""
    keys = [resume_key(slide, item, provenance, use_mask_prompts=use_mask_prompts)
            for item in items]
    done_before = store.live_by_resume_key(keys) if look_up else {}
    groups, errors, fitted = _fitted_groups(slide, items, hr_mpp=hr_mpp)
    logger.info("batch refine: %d items in %d crop groups, %d off the slide, %d done before",
                len(items), len(groups), len(errors), len(done_before))
    return BatchPlan([fitted.get(i, item) for i, item in enumerate(items)], keys, done_before,
                     groups, errors)


def segment_group(slide: Slide, items: Sequence[BatchItem], indices: Sequence[int],
                  predictor: object, *, hr_mpp: float, center: tuple[float, float] | None,
                  use_mask_prompts: bool = False, decoder_batch: int = DECODER_BATCH,
                  crop_cache: CropPairCache | None = None
                  ) -> Iterator[list[tuple[int, SegmentedObject | str]]]:
    """Segment the items `indices` of one crop group (crops centred on `center`), one list
    of (index, object or one-line error) per decoder batch of at most `decoder_batch`.
    The same code runs in one process (`refine_batch`) and on a cluster's workers."""
    crops = crop_pair(slide, items[indices[0]].prompt, hr_mpp=hr_mpp, center=center,
                      crop_cache=crop_cache)
    step = max(1, decoder_batch)
    for sub in _by_prompt_kind(items, list(indices), use_mask_prompts=use_mask_prompts):
        for start in range(0, len(sub), step):
            part = sub[start:start + step]
            results = _predict_group(slide, crops, [items[i] for i in part], predictor,
                                     use_mask_prompts=use_mask_prompts)
            yield list(zip(part, results, strict=True))


def store_result(store: ObjectStore, plan: BatchPlan, index: int,
                 result: SegmentedObject | Outline, *, provenance: Provenance,
                 default_class: str, group: str) -> int:
    """Store item `index`'s object: a new object with its resume key, or a new version of
    the item's object (or of the one a forced rerun redoes). Returns the object's id."""
    item, key = plan.items[index], plan.keys[index]
    existing = plan.done_before.get(key)
    target = item.object_id if item.object_id is not None else existing
    if target is not None:
        refine_stored(store, target, result, provenance=provenance, group=group)
        return target
    return store_segmented(store, result, class_name=item.class_name or default_class,
                           provenance=provenance, resume_key=key, group=group)


def _by_prompt_kind(items: Sequence[BatchItem], indices: list[int], *,
                    use_mask_prompts: bool) -> list[list[int]]:
    """Split a crop group into runs of prompts of one shape (box or not, number of points,
    mask prompt or not): one predictor call takes arrays of equal shape."""
    kinds: dict[tuple[bool, int, bool], list[int]] = {}
    for index in indices:
        item = items[index]
        kind = (item.prompt.box is not None, len(item.prompt.points),
                use_mask_prompts and item.geometry is not None)
        kinds.setdefault(kind, []).append(index)
    return list(kinds.values())


def _predict_group(slide: Slide, crops: CropPair, items: list[BatchItem], predictor: object,
                   *, use_mask_prompts: bool) -> list[SegmentedObject | str]:
    """One predictor call for prompts of one kind on one crop pair: an object, or an error
    line, per item."""
    local = [crops.hr.map.prompt_to_crop(item.prompt) for item in items]
    arrays: dict[str, np.ndarray] = {}
    if local[0].box is not None:
        arrays["boxes"] = np.stack([p.box for p in local])  # type: ignore[misc]
    if len(local[0].points):
        arrays["points"] = np.stack([p.points for p in local])
        arrays["point_labels"] = np.stack([p.labels for p in local])
    if use_mask_prompts and items[0].geometry is not None:
        arrays["mask_prompts"] = np.stack([mask_prompt(crops, item.geometry)  # type: ignore[arg-type]
                                           for item in items])
    prediction = predictor.predict(  # type: ignore[attr-defined]
        crops.hr.load, crops.lr.load, hr_to_lr=crops.hr_to_lr,
        cache_key=embedding_key(slide, crops), **arrays)
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


def mask_prompt(crops: CropPair, geometry: Areal) -> np.ndarray:
    """An outline (level-0 px) as SAM mask-prompt logits over the HR crop: (256, 256)
    float32, +`MASK_PROMPT_LOGIT` where a cell's centre is inside it, -that elsewhere. Sampled
    at the cells' centres, so a huge outline costs no more than a small one."""
    cmap = crops.hr.map
    cell = crops.hr.map.size[0] / LOW_RES
    centres = (np.arange(LOW_RES) + 0.5) * cell
    xs = np.floor(cmap.origin[0] + centres * cmap.scale[0]) + 0.5
    ys = np.floor(cmap.origin[1] + centres * cmap.scale[1]) + 0.5
    inside = rasterize(geometry, xs, ys)
    return np.where(inside, MASK_PROMPT_LOGIT, -MASK_PROMPT_LOGIT).astype(np.float32)
