"""Segment all with the instance decoder: every object of a region, one decoder pass a tile.

The region is cut into tiles whose cores (the HR crop less a halo on each side) tile it; each
tile's crop pair is encoded once (HR, and LR when the decoder reads context), the decoder
predicts its three maps and a seeded watershed cuts them into objects. A tile keeps the
objects whose centre lies in its core, so an object on a core border is kept by exactly one
tile, and whole: the halo is wider than any nucleus, so its crop sees all of it. Tiles with no
tissue (the slide's thumbnail mask) are skipped before anything is read.

With `refine`, each proposal's box (and, with `refine_point`, an inner point) goes through
WSI-SAM (in batches, on the embeddings the tile already computed) and the prompt's mask replaces
the proposal when the two agree (IoU >= `refine_agreement`). Stored as the grid method stores:
one change-log group per run, each tile's objects before its progress is yielded; reruns add
nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import box as shapely_box

from ..errors import PromptError
from ..memory import release_free_memory
from ..model.instance_decoder import OUTPUT_SIZE
from ..model.instance_model import InstanceModel
from ..model.instance_watershed import WatershedSettings
from ..polygons import Areal, labels_to_geometries, mask_to_geometry, polygonal
from ..prompts import Prompt
from ..scale import CROP_SIZE
from ..slide import CropPair, Slide
from ..slide.crop_grid import CropPairCache
from ..slide.tissue import TissueMask
from ..store.object_store import ObjectStore
from .auto_region import Accepted, AutoProgress, fit_region, stored_in_region
from .items import Provenance
from .segment import crop_pair, embedding_key, mask_to_level0

logger = logging.getLogger(__name__)

SCORE_KIND = "foreground"
"""What a decoder object's score is: the mean foreground probability over the object."""


@dataclass(frozen=True)
class DecoderSettings:
    """How Segment all runs the decoder.

    halo_px: HR px on each side of a tile's core (128 HR px = 32 µm at 40x: wider than a
        nucleus, so no kept object is cut by its crop).
    refine: send each proposal through WSI-SAM for the final outline.
    refine_batch: prompts per decoder call when refining.
    refine_agreement: a refined mask replaces its proposal only when their IoU reaches this
        (else the prompt found another object, and the proposal stays).
    refine_point: prompt with the proposal's inner point as well as its box.
        The two defaults were chosen on hgsc_nest's tuning stripe (docs/results.md).
    min_area_um2, max_area_um2: object area bounds (None: a tenth of the HR crop).
    duplicate_overlap: share of the smaller of two objects they must share to be one.
    watershed: thresholds overriding the decoder's own tuned ones.
    """

    halo_px: int = 128
    refine: bool = False
    refine_batch: int = 16
    refine_agreement: float = 0.3
    refine_point: bool = False
    min_area_um2: float = 6.0
    max_area_um2: float | None = None
    duplicate_overlap: float = 0.3
    watershed: WatershedSettings | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.halo_px < CROP_SIZE // 4:
            raise PromptError(f"the halo must be 0..{CROP_SIZE // 4 - 1} HR px, got "
                              f"{self.halo_px}")
        if not 0.0 <= self.refine_agreement <= 1.0:
            raise PromptError("refine agreement must be between 0 and 1, got "
                              f"{self.refine_agreement}")
        if self.refine_batch < 1:
            raise PromptError(f"the refine batch must be >= 1, got {self.refine_batch}")
        if self.min_area_um2 < 0 or (self.max_area_um2 is not None
                                     and self.max_area_um2 <= self.min_area_um2):
            raise PromptError(f"object area bounds {self.min_area_um2}..{self.max_area_um2} "
                              "µm² are empty; give 0 <= min area < max area")
        if not 0.0 <= self.duplicate_overlap <= 1.0:
            raise PromptError("duplicate overlap must be between 0 and 1, got "
                              f"{self.duplicate_overlap}")

    def max_area_px(self, slide: Slide, hr_mpp: float) -> float:
        mpp_x, mpp_y = slide.require_mpp()
        um2 = (self.max_area_um2 if self.max_area_um2 is not None
               else 0.1 * (CROP_SIZE * hr_mpp) ** 2)
        return um2 / (mpp_x * mpp_y)


@dataclass(frozen=True)
class Tile:
    """One tile: its crop pair's centre and its core, both level-0 px."""

    center: tuple[float, float]
    core: tuple[float, float, float, float]


def plan_tiles(slide: Slide, region: Areal, *, hr_mpp: float, halo_px: int,
               tissue: TissueMask | None = None) -> list[Tile]:
    """Tiles whose cores cover the region's bounds, centred on it, keeping those whose core
    meets the region and (with `tissue`) holds some tissue."""
    mpp_x, mpp_y = slide.require_mpp()
    core_x = (CROP_SIZE - 2 * halo_px) * hr_mpp / mpp_x
    core_y = (CROP_SIZE - 2 * halo_px) * hr_mpp / mpp_y
    x0, y0, x1, y1 = region.bounds
    nx = max(1, int(np.ceil((x1 - x0) / core_x - 1e-9)))
    ny = max(1, int(np.ceil((y1 - y0) / core_y - 1e-9)))
    sx = (x0 + x1) / 2 - nx * core_x / 2
    sy = (y0 + y1) / 2 - ny * core_y / 2
    tiles = []
    for j in range(ny):
        for i in range(nx):
            core = (sx + i * core_x, sy + j * core_y, sx + (i + 1) * core_x,
                    sy + (j + 1) * core_y)
            if not region.intersects(shapely_box(*core)):
                continue
            if tissue is not None and not tissue.any_in(*core):
                continue
            tiles.append(Tile(((core[0] + core[2]) / 2, (core[1] + core[3]) / 2), core))
    return tiles


def tile_proposals(slide: Slide, tile: Tile, crops: CropPair, labels: np.ndarray,
                   foreground: np.ndarray, *, region: Areal, min_area_px: float,
                   max_area_px: float) -> list[tuple[Areal, float]]:
    """The tile's objects (level-0 outlines with their scores) whose centre lies in its core,
    cut to the region, within the area bounds."""
    sx, sy = crops.hr.map.scale
    ox, oy = crops.hr.map.origin
    factor = CROP_SIZE / OUTPUT_SIZE
    to_level0 = [sx * factor, 0, 0, sy * factor, ox, oy]
    valid = crops.hr.valid[::int(factor), ::int(factor)]
    labels = np.where(valid, labels, 0)
    cx0, cy0, cx1, cy1 = tile.core
    out = []
    for label, geometry in labels_to_geometries(labels):
        placed = shapely.affinity.affine_transform(geometry, to_level0)
        centre = placed.centroid
        if not (cx0 <= centre.x < cx1 and cy0 <= centre.y < cy1):
            continue
        cut = polygonal(shapely.intersection(placed, region))
        if cut.is_empty or not min_area_px <= cut.area <= max_area_px:
            continue
        score = float(foreground[labels == label].mean())
        out.append((cut, score))
    return out


def refine_proposals(slide: Slide, crops: CropPair, key: tuple, proposals: list[Areal],
                     predictor: object, *, batch: int, agreement: float = 0.3,
                     with_point: bool = False) -> list[Areal]:
    """Each proposal's outline after WSI-SAM on its box (and inner point), where the two
    agree (IoU >= `agreement`); the proposal itself where they do not."""
    out = list(proposals)
    if not proposals:
        return out
    boxes = crops.hr.map.box_to_crop(np.array([p.bounds for p in proposals]))
    inner = np.array([p.representative_point().coords[0] for p in proposals])
    points = crops.hr.map.to_crop(inner)
    for start in range(0, len(proposals), batch):
        stop = min(start + batch, len(proposals))
        extra = ({"points": points[start:stop, None, :],
                  "point_labels": np.ones((stop - start, 1), np.int64)} if with_point else {})
        prediction = predictor.predict(  # type: ignore[attr-defined]
            crops.hr.load, crops.lr.load, hr_to_lr=crops.hr_to_lr, cache_key=key,
            boxes=boxes[start:stop], **extra)
        for k, mask in enumerate(prediction.masks):
            placed = mask_to_level0(crops, mask, dimensions=slide.dimensions)
            if placed is None:
                continue
            refined = polygonal(mask_to_geometry(*placed))
            proposal = proposals[start + k]
            union = shapely.union(refined, proposal).area
            if union > 0 and shapely.intersection(refined, proposal).area / union \
                    >= agreement:
                out[start + k] = refined
    return out


@dataclass(frozen=True)
class TileObject:
    """One object a tile found: its outline (refined or not), score and inner point."""

    geometry: Areal
    score: float
    point: tuple[float, float]


def tile_objects(slide: Slide, tile: Tile, model: InstanceModel, predictor: object, *,
                 region: Areal, hr_mpp: float, settings: DecoderSettings,
                 accepted: Accepted, crop_cache: CropPairCache | None = None
                 ) -> list[TileObject]:
    """The new objects of one tile (not duplicates of `accepted`, which they join)."""
    mpp_x, mpp_y = slide.require_mpp()
    crops = crop_pair(slide, Prompt(points=np.array([tile.center])), hr_mpp=hr_mpp,
                      center=tile.center, crop_cache=crop_cache)
    key = embedding_key(slide, crops)
    hr = predictor.encode(crops.hr.load, key=key)  # type: ignore[attr-defined]
    lr = (predictor.encode(crops.lr.load, key=(key, "lr"))  # type: ignore[attr-defined]
          if model.uses_context else None)
    maps = model.maps(hr, lr, crops.hr.image)
    labels = model.labels(maps, settings.watershed)
    found = tile_proposals(slide, tile, crops, labels, maps[0], region=region,
                           min_area_px=max(settings.min_area_um2 / (mpp_x * mpp_y), 1.0),
                           max_area_px=settings.max_area_px(slide, hr_mpp))
    found = [(g, s) for g, s in found if not accepted.duplicates(g)]
    outlines = [g for g, _ in found]
    if settings.refine:
        outlines = refine_proposals(slide, crops, key, outlines, predictor,
                                    batch=settings.refine_batch,
                                    agreement=settings.refine_agreement,
                                    with_point=settings.refine_point)
    out = []
    for geometry, (proposal, score) in zip(outlines, found, strict=True):
        accepted.add(geometry)
        point = proposal.representative_point()
        out.append(TileObject(geometry, score, (float(point.x), float(point.y))))
    return out


def segment_all_decoder(
    slide: Slide,
    region: Areal | Sequence[float],
    model: InstanceModel,
    predictor: object,
    *,
    store: ObjectStore,
    class_name: str = "object",
    hr_mpp: float | None = None,
    settings: DecoderSettings | None = None,
    provenance: Provenance | None = None,
    tissue: TissueMask | None = None,
    crop_cache: CropPairCache | None = None,
    group: str | None = None,
) -> Generator[AutoProgress, None, None]:
    """Segment every object in `region` with the instance decoder `model` (encoder outputs
    from `predictor`, a `WsiSamPredictor`, which also refines) and store them.

    hr_mpp: None runs at the decoder's own scale. Yields one `AutoProgress` per tile after its
    objects are stored; one change-log `group` for the run; closing keeps what was reported.
    """
    settings = settings or DecoderSettings()
    hr_mpp = float(hr_mpp if hr_mpp is not None else model.settings.hr_mpp)
    area = fit_region(slide, region)
    tiles = plan_tiles(slide, area, hr_mpp=hr_mpp, halo_px=settings.halo_px, tissue=tissue)
    group = group or store.new_group()
    accepted = stored_in_region(store, area, overlap=settings.duplicate_overlap,
                                largest=settings.max_area_px(slide, hr_mpp))
    if provenance is None:
        provenance = (Provenance(getattr(predictor, "model", "wsi-sam"), hr_mpp=hr_mpp)
                      if settings.refine else Provenance("instance-decoder", model.name,
                                                         hr_mpp=hr_mpp))
    logger.info("segment all (decoder %s): %d tiles, %d objects there already", model.name,
                len(tiles), len(accepted.geometries))
    started = time.perf_counter()
    added = 0
    for done, tile in enumerate(tiles, start=1):
        found = tile_objects(slide, tile, model, predictor, region=area, hr_mpp=hr_mpp,
                             settings=settings, accepted=accepted, crop_cache=crop_cache)
        ids: list[int] = []
        for obj in found:
            prompt = {"box": None, "points": [list(obj.point)], "labels": [1],
                      "hr_mpp": hr_mpp, "auto": True, "method": "decoder",
                      "decoder": model.name, "refined": settings.refine}
            ids.append(store.add(obj.geometry, class_name=class_name, model=provenance.model,
                                 head=provenance.head, score=obj.score,
                                 score_kind=SCORE_KIND, prompt=prompt, group=group))
        added += len(ids)
        release_free_memory()  # a long run's heap stays flat (memory.py)
        elapsed = time.perf_counter() - started
        yield AutoProgress(done=done, total=len(tiles), added=added, ids=tuple(ids),
                           seconds_left=elapsed / done * (len(tiles) - done),
                           found=tuple(sorted(accepted.found)), points=len(found))
