"""Segment all by point prompts (``--method grid``): every object of a region from a grid of points.

The region (level-0 px) is covered by a grid of points, ``points_per_side`` per HR crop side.
Crops tile the region half a crop apart and each point goes to the nearest crop centre, so it
lies within a quarter crop of it (where the heads learnt) and is prompted once.
A crop's points run through the model in large decoder batches; its masks are filtered with
segment-anything's automatic-mask utilities (the model's score, stability, masks cut by the
crop's inner edges, box NMS, small islands and holes); the survivors are cut to the region in
level-0 pixels and de-duplicated against what this run (and the store) already holds.

`segment_all` is a generator, as `batch.refine_batch`: it stores each crop's objects (one
change-log group for the whole run, so one undo removes it) before yielding its progress, so a
cancel keeps everything reported. A rerun adds nothing: its masks duplicate stored objects.
Coordinates are level-0 slide pixels (x, y).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
import torch
from segment_anything.utils.amg import batched_mask_to_box
from skimage.morphology import remove_small_holes, remove_small_objects
from torchvision.ops import nms

from ..errors import PromptError
from ..memory import release_free_memory
from ..model.predictor import stability_score
from ..polygons import Areal, mask_to_geometry, polygonal
from ..prompts import Prompt
from ..scale import CROP_SIZE
from ..slide import CropPair, Slide
from ..slide.crop_grid import CropPairCache, grid_step
from ..store.object_store import ObjectStore
from .auto_region import Accepted, AutoProgress, fit_region, stored_in_region
from .items import Provenance
from .objects import Outline
from .segment import crop_pair, embedding_key, mask_to_level0

logger = logging.getLogger(__name__)

DEFAULT_MAX_AREA_OF_CROP = 0.1
"""Largest object without --max-area, as a share of the HR crop's area."""


@dataclass(frozen=True)
class AutoSettings:
    """How Segment all prompts and filters (defaults chosen on hgsc_nest: docs/results.md).

    points_per_side: grid points per HR crop side (64: one every 16 HR px, 4 µm at 40x;
        32 runs 4x faster: docs/segment_all.md).
    min_score: the model's own score of a mask (SAM: predicted IoU; WSI-SAM: the stability
        of its logits, as it has no IoU estimate of its own).
    min_stability: stability score (IoU of the mask at logit thresholds ±1).
    box_nms: IoU of mask boxes above which the lower-scored mask of one crop goes.
    duplicate_overlap: share of the smaller mask covered by an earlier one (this run's, or an
        object already stored) above which it is the same object and dropped.
    min_area_um2, max_area_um2: object area bounds; islands and holes under min_area_um2
        are removed from each mask first. max_area_um2 None: a tenth of the HR crop.
    edge_px: masks within this many HR px of a crop side that lies inside the slide are cut
        by the crop and dropped (the neighbouring crop sees them whole).
    multimask: take the best of SAM's three masks per point instead of its single mask.
    decoder_batch: points per decoder call.
    suppress: skip grid points inside objects already found (by this run or stored).
    """

    points_per_side: int = 64
    min_score: float = 0.9
    min_stability: float = 0.9
    box_nms: float = 0.7
    duplicate_overlap: float = 0.3
    min_area_um2: float = 6.0
    max_area_um2: float | None = None
    edge_px: int = 8
    multimask: bool = False
    decoder_batch: int = 64
    suppress: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.points_per_side <= 256:
            raise PromptError(f"points per side must be 1..256, got {self.points_per_side}")
        for name in ("min_score", "min_stability", "box_nms", "duplicate_overlap"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise PromptError(f"{name.replace('_', ' ')} must be between 0 and 1, "
                                  f"got {value}")
        if self.min_area_um2 < 0 or (self.max_area_um2 is not None
                                     and self.max_area_um2 <= self.min_area_um2):
            raise PromptError(f"object area bounds {self.min_area_um2}..{self.max_area_um2} "
                              "µm² are empty; give 0 <= min area < max area")
        if self.decoder_batch < 1:
            raise PromptError(f"decoder batch must be >= 1, got {self.decoder_batch}")


@dataclass
class CropPoints:
    """The grid points (level-0 (n, 2) x, y) whose nearest crop node is ``center``."""

    center: tuple[float, float]
    points: np.ndarray


@dataclass(frozen=True)
class Candidates:
    """The model's masks for one decoder batch of points on one crop pair."""

    crops: CropPair
    points: np.ndarray
    """(n, 2) level-0 x, y."""
    logits: np.ndarray
    """(n, S, S) float32 mask logits on the HR crop."""
    scores: np.ndarray
    """(n,) the model's own score (`score_kind`)."""
    stability: np.ndarray
    """(n,) stability score of each mask."""
    model: str
    score_kind: str


def region_points(slide: Slide, region: Areal, *, hr_mpp: float, points_per_side: int
                  ) -> np.ndarray:
    """(n, 2) level-0 points of a regular grid inside `region`, ``points_per_side`` per HR
    crop side, each at the centre of its grid cell."""
    mpp_x, mpp_y = slide.require_mpp()
    step = CROP_SIZE / points_per_side * hr_mpp
    step_x, step_y = step / mpp_x, step / mpp_y
    x0, y0, x1, y1 = region.bounds
    xs = np.arange(np.floor(x0 / step_x), np.ceil(x1 / step_x)) * step_x + step_x / 2
    ys = np.arange(np.floor(y0 / step_y), np.ceil(y1 / step_y)) * step_y + step_y / 2
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    inside = shapely.contains_xy(region, grid[:, 0], grid[:, 1])
    return grid[inside]


def plan_crops(slide: Slide, region: Areal, *, hr_mpp: float, points_per_side: int
               ) -> list[CropPoints]:
    """The region's grid points grouped by crop: as few crops as keep every point within a
    quarter crop of its crop's centre, spread evenly over the region's bounds.

    A point far off its crop's centre gets worse masks (the heads learn on prompts within a
    quarter crop of the centre, as the snapped crop grid gives them), so each point goes to
    the nearest of these centres; a region up to half a crop wide costs one crop pair.
    """
    points = region_points(slide, region, hr_mpp=hr_mpp, points_per_side=points_per_side)
    if len(points) == 0:
        return []
    step_x, step_y = grid_step(slide, hr_mpp=hr_mpp)
    x0, y0, x1, y1 = region.bounds
    axes = []
    for low, high, step in ((x0, x1, step_x), (y0, y1, step_y)):
        count = max(1, int(np.ceil((high - low) / step - 1e-9)))
        width = (high - low) / count
        axes.append(low + width * (np.arange(count) + 0.5))
    centres = np.stack(np.meshgrid(*axes), axis=-1).reshape(-1, 2)
    owner = np.argmin(np.linalg.norm(points[None] - centres[:, None], axis=2), axis=0)
    return [CropPoints((float(c[0]), float(c[1])), points[owner == k])
            for k, c in enumerate(centres) if (owner == k).any()]


def crop_candidates(slide: Slide, planned: CropPoints, predictor: object, *, hr_mpp: float,
                    settings: AutoSettings, crop_cache: CropPairCache | None = None,
                    suppress: Accepted | None = None) -> Iterator[Candidates]:
    """The model's masks for the points of one crop, one `Candidates` per decoder batch.

    suppress: points inside an object it holds are not prompted (point suppression: each
    batch is checked against the objects found so far, this crop's earlier batches too)."""
    first = Prompt(points=planned.points[:1])
    crops = crop_pair(slide, first, hr_mpp=hr_mpp, center=planned.center,
                      crop_cache=crop_cache)
    key = embedding_key(slide, crops)
    for start in range(0, len(planned.points), settings.decoder_batch):
        level0 = planned.points[start:start + settings.decoder_batch]
        if suppress is not None:
            level0 = level0[~suppress.covers(level0)]
            if len(level0) == 0:
                continue
        part = crops.hr.map.to_crop(level0)
        prediction = predictor.predict(  # type: ignore[attr-defined]
            crops.hr.load, crops.lr.load, hr_to_lr=crops.hr_to_lr, cache_key=key,
            points=part[:, None, :], point_labels=np.ones((len(part), 1), np.int64),
            multimask=settings.multimask)
        if prediction.score_kind == "stability":
            stability = prediction.scores
        else:
            stability = mask_stability(prediction.logits)
        yield Candidates(crops, level0, prediction.logits,
                         prediction.scores, stability, prediction.model,
                         prediction.score_kind)


def mask_stability(logits: np.ndarray) -> np.ndarray:
    """(n, H, W) logits -> (n,) segment-anything's stability score (0 for an empty mask)."""
    return stability_score(torch.from_numpy(logits)).numpy()


def select_masks(candidates: Candidates, *, settings: AutoSettings
                 ) -> list[tuple[int, np.ndarray]]:
    """The candidates worth keeping, as (index, cleaned HR-crop mask), best score first.

    Filters in segment-anything's order: score and stability; masks cut off by an inner
    crop side; islands and holes under the minimum area; area bounds; box NMS.
    """
    crops = candidates.crops
    px_um2 = crops.hr_mpp ** 2
    keep = np.flatnonzero((candidates.scores >= settings.min_score)
                          & (candidates.stability >= settings.min_stability))
    if keep.size == 0:
        return []
    min_px = settings.min_area_um2 / px_um2
    max_um2 = settings.max_area_um2
    max_px = (DEFAULT_MAX_AREA_OF_CROP * CROP_SIZE ** 2 if max_um2 is None
              else max_um2 / px_um2)
    inner = _inner_sides(crops)
    masks: list[np.ndarray] = []
    kept: list[int] = []
    for index in keep:
        mask = (candidates.logits[index] > 0) & crops.hr.valid
        if min_px >= 1:
            mask = remove_small_objects(mask, max_size=int(min_px))
            mask = remove_small_holes(mask, max_size=int(min_px))
        area = int(mask.sum())
        if area == 0 or area < min_px or area > max_px:
            continue
        if _touches_inner_side(mask, inner, settings.edge_px):
            continue
        masks.append(mask)
        kept.append(int(index))
    if not kept:
        return []
    stacked = torch.from_numpy(np.stack(masks))
    boxes = batched_mask_to_box(stacked).float()
    order = nms(boxes, torch.from_numpy(candidates.scores[kept]).float(), settings.box_nms)
    return [(kept[i], masks[i]) for i in order.tolist()]


def _inner_sides(crops: CropPair) -> tuple[bool, bool, bool, bool]:
    """Which sides of the HR crop (left, top, right, bottom) lie inside the slide."""
    valid = crops.hr.valid
    return (bool(valid[:, 0].any()), bool(valid[0].any()), bool(valid[:, -1].any()),
            bool(valid[-1].any()))


def _touches_inner_side(mask: np.ndarray, inner: tuple[bool, bool, bool, bool],
                        edge: int) -> bool:
    if edge <= 0:
        return False
    left, top, right, bottom = inner
    return bool((left and mask[:, :edge].any()) or (top and mask[:edge].any())
                or (right and mask[:, -edge:].any()) or (bottom and mask[-edge:].any()))


def crop_objects(slide: Slide, candidates: Candidates, *, settings: AutoSettings,
                 region: Areal, accepted: Accepted, hr_mpp: float) -> list[Outline]:
    """The new objects of one decoder batch: selected, cut to the region, not duplicates."""
    mpp = slide.require_mpp()
    min_area_px = settings.min_area_um2 / (mpp[0] * mpp[1])
    out: list[Outline] = []
    for index, mask in select_masks(candidates, settings=settings):
        placed = mask_to_level0(candidates.crops, mask, dimensions=slide.dimensions)
        if placed is None:
            continue
        geometry = polygonal(shapely.intersection(mask_to_geometry(*placed), region))
        if geometry.is_empty or geometry.area < max(min_area_px, 1.0):
            continue
        if accepted.duplicates(geometry):
            continue
        accepted.add(geometry)
        x, y = (float(v) for v in candidates.points[index])
        prompt = {"box": None, "points": [[x, y]], "labels": [1], "hr_mpp": float(hr_mpp),
                  "auto": True}
        out.append(Outline(geometry, float(candidates.scores[index]), candidates.score_kind,
                           candidates.model, prompt))
    return out


def largest_object_px(slide: Slide, *, settings: AutoSettings, hr_mpp: float) -> float:
    """The largest object a run keeps, in level-0 px² (`AutoSettings.max_area_um2`)."""
    mpp_x, mpp_y = slide.require_mpp()
    um2 = (settings.max_area_um2 if settings.max_area_um2 is not None
           else DEFAULT_MAX_AREA_OF_CROP * (CROP_SIZE * hr_mpp) ** 2)
    return um2 / (mpp_x * mpp_y)


def segment_all(
    slide: Slide,
    region: Areal | Sequence[float],
    predictor: object,
    *,
    store: ObjectStore,
    class_name: str = "object",
    hr_mpp: float = 1.0,
    settings: AutoSettings | None = None,
    provenance: Provenance | None = None,
    crop_cache: CropPairCache | None = None,
    group: str | None = None,
) -> Generator[AutoProgress, None, None]:
    """Segment every object in `region` (an (x0, y0, x1, y1) box or a polygon, level-0 px)
    with `predictor` (a `WsiSamPredictor`) and store them as objects of `class_name`.

    Yields one `AutoProgress` per crop, after that crop's objects are stored; all of them
    share one change-log `group` (one undo removes the run). Closing the generator keeps
    every object reported.
    """
    settings = settings or AutoSettings()
    area = fit_region(slide, region)
    provenance = provenance or Provenance(getattr(predictor, "model", "sam"), hr_mpp=hr_mpp)
    group = group or store.new_group()
    plan = plan_crops(slide, area, hr_mpp=hr_mpp, points_per_side=settings.points_per_side)
    if not plan:
        raise PromptError("the region is smaller than the point grid; draw a larger region "
                          "or raise the points per side")
    accepted = stored_in_region(store, area, overlap=settings.duplicate_overlap,
                                largest=largest_object_px(slide, settings=settings,
                                                          hr_mpp=hr_mpp))
    logger.info("segment all: %d points in %d crops, %d objects there already",
                sum(len(p.points) for p in plan), len(plan), len(accepted.geometries))
    started = time.perf_counter()
    added = 0
    for done, planned in enumerate(plan, start=1):
        ids: list[int] = []
        seen = 0
        for candidates in crop_candidates(slide, planned, predictor, hr_mpp=hr_mpp,
                                          settings=settings, crop_cache=crop_cache,
                                          suppress=accepted if settings.suppress else None):
            seen += len(candidates.points)
            for outline in crop_objects(slide, candidates, settings=settings, region=area,
                                        accepted=accepted, hr_mpp=hr_mpp):
                ids.append(store.add(outline.geometry, class_name=class_name,
                                     model=provenance.model, head=provenance.head,
                                     score=outline.score, score_kind=outline.score_kind,
                                     prompt=outline.prompt, group=group))
        added += len(ids)
        release_free_memory()  # a long run's heap stays flat (memory.py)
        elapsed = time.perf_counter() - started
        yield AutoProgress(done=done, total=len(plan), added=added, ids=tuple(ids),
                           seconds_left=elapsed / done * (len(plan) - done),
                           found=tuple(sorted(accepted.found)), points=seen)
