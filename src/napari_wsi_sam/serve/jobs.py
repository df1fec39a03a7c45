"""What a worker does for one request: the pipeline on the slide (or the sent image), the
objects stored, and the GeoJSON Features QuPath's extension reads back.

A Feature's geometry is in the sent image's pixels (the extension maps it back with its
region's offset and downsample); its ``id`` is the stored object's UUID; its properties carry
what samapi's do (``object_idx``, ``label``, ``quality``, ``sam_model``) and what ran:
``model``, ``scale``, ``context`` ("slide NAME" or "sent image (no 5x context: why)"),
``stored`` (where the object is kept, or why nowhere).
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PromptError, ServeError
from ..formats.geojson import geometry_json
from ..pipeline import Provenance
from ..pipeline.auto_grid import AutoSettings, segment_all
from ..pipeline.objects import outline_of, store_segmented
from ..pipeline.segment import segment_prompt
from ..scale import CROP_SIZE
from ..slide.crop_grid import CropPairCache
from ..store.files import slide_meta
from ..store.object_store import ObjectStore, StoredObject
from .context import Place
from .models import Chosen
from .protocol import AutoMaskBody, PromptBody

CLASS_NAME = "object"
"""The class of objects made through the server (samapi's ``label``)."""


@dataclass(frozen=True)
class Run:
    """What ran, as every Feature of the answer repeats it."""

    chosen: Chosen
    place: Place
    sam_model: str

    def properties(self, hr_mpp: float) -> dict[str, Any]:
        choice = self.chosen.choice
        scale = f"HR {hr_mpp:g} µm/px"
        if choice.base.uses_context:
            scale += f", LR {2 * hr_mpp:g} µm/px"
        if not self.place.on_slide:
            scale += " (of the sent image's pixels, taken as 1 µm/px)"
        props: dict[str, Any] = {"sam_model": self.sam_model, "model": choice.label,
                                 "model_spec": choice.spec, "scale": scale,
                                 "context": self.place.context}
        if choice.head is not None:
            props["head"] = choice.head.name
        if self.chosen.note:
            props["note"] = self.chosen.note
        return props


def prompt_job(body: PromptBody, run: Run):
    """One object for a box and/or points (POST /sam/)."""
    prompt = run.place.prompt(bbox=body.bbox, points=body.point_coords,
                              labels=body.point_labels)

    def job(predictor: Any, crops: CropPairCache) -> list[dict[str, Any]]:
        hr_mpp = run.chosen.hr_mpp
        try:
            obj = segment_prompt(run.place.slide, prompt, predictor, hr_mpp=hr_mpp,
                                 crop_cache=crops if run.place.on_slide else None)
        except PromptError as error:
            raise ServeError(str(error)) from error
        props = run.properties(float(obj.crops.hr_mpp))
        store = run.place.store
        provenance = Provenance.of(run.chosen.choice, hr_mpp=hr_mpp)
        if store is not None:
            object_id = store_segmented(store, obj, class_name=CLASS_NAME,
                                        provenance=provenance)
            stored = store.get(object_id)
            return [feature(stored.geometry, stored.uuid, 0, obj.score, props,
                            run.place, where=f"object {object_id} in {store.path}")]
        outline = outline_of(obj)
        return [feature(outline.geometry, None, 0, obj.score, props, run.place,
                        where=_nowhere(run.place))]

    return job


def automask_job(body: AutoMaskBody, run: Run):
    """Every object on the sent image (POST /sam/automask/), by the point-grid method."""
    place = run.place
    mpp = place.slide.mpp or (1.0, 1.0)
    pixel_um2 = place.dx * place.dy * mpp[0] * mpp[1]
    try:
        settings = AutoSettings(
            points_per_side=crop_points_per_side(body.points_per_side, place,
                                                 hr_mpp=run.chosen.hr_mpp),
            min_score=body.pred_iou_thresh, min_stability=body.stability_score_thresh,
            box_nms=body.box_nms_thresh, min_area_um2=max(0, body.min_mask_region_area) *
            pixel_um2, decoder_batch=max(1, min(body.points_per_batch, 256)),
            multimask="multi" in body.output_type.lower())
    except PromptError as error:
        raise ServeError(str(error)) from error

    def job(predictor: Any, crops: CropPairCache) -> list[dict[str, Any]]:
        hr_mpp = run.chosen.hr_mpp
        provenance = Provenance.of(run.chosen.choice, hr_mpp=hr_mpp)
        with _store_for(place) as store:
            ids: list[int] = []
            found: tuple[int, ...] = ()
            try:
                for step in segment_all(place.slide, place.region(), predictor, store=store,
                                        class_name=CLASS_NAME, hr_mpp=hr_mpp,
                                        settings=settings, provenance=provenance,
                                        crop_cache=crops if place.on_slide else None):
                    ids += step.ids
                    found = step.found
            except PromptError as error:
                raise ServeError(str(error)) from error
            props = run.properties(hr_mpp)
            out = []
            for index, object_id in enumerate([*ids, *found]):
                obj: StoredObject = store.get(object_id)
                where = (f"object {object_id} in {store.path}" if place.on_slide
                         else _nowhere(place))
                if object_id in found:
                    where = f"already in the store: {where}"
                out.append(feature(obj.geometry, obj.uuid if place.on_slide else None, index,
                                   obj.score, props, place, where=where))
            return out

    return job


def crop_points_per_side(points_per_side: int | None, place: Place, *, hr_mpp: float) -> int:
    """samapi's points per side of the sent image as the pipeline's points per side of an
    HR crop (the same spacing on the tissue), within the pipeline's 1..256."""
    if points_per_side is None:
        points_per_side = 32
    if not 1 <= points_per_side <= 256:
        raise ServeError(f"points_per_side must be 1..256, got {points_per_side}")
    mpp = place.slide.mpp or (1.0, 1.0)
    across_hr_px = place.size[0] * place.dx * mpp[0] / hr_mpp
    return max(1, min(256, round(points_per_side * CROP_SIZE / max(across_hr_px, 1.0))))


class _store_for:
    """The slide's store, or a scratch store for the sent image alone (deleted after)."""

    def __init__(self, place: Place) -> None:
        self.place = place
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._store: ObjectStore | None = None

    def __enter__(self) -> ObjectStore:
        if self.place.store is not None:
            return self.place.store
        self._scratch = tempfile.TemporaryDirectory(prefix="wsi-sam-serve-")
        self._store = ObjectStore.create(Path(self._scratch.name) / "objects.sqlite",
                                         meta=slide_meta(self.place.slide))
        return self._store

    def __exit__(self, *_exc: object) -> None:
        if self._store is not None:
            self._store.close()
        if self._scratch is not None:
            self._scratch.cleanup()


def _nowhere(place: Place) -> str:
    return f"nowhere: {place.why_not}, so no object store is known"


def feature(geometry, uid: str | None, index: int, score: float | None,
            props: dict[str, Any], place: Place, *, where: str) -> dict[str, Any]:
    """One GeoJSON Feature as the extension reads it (geometry in sent-image pixels)."""
    properties = {"object_idx": index, "label": CLASS_NAME,
                  "quality": None if score is None else float(score), **props,
                  "stored": where}
    return {"type": "Feature", "id": uid or str(uuid.uuid4()),
            "geometry": geometry_json(place.to_sent(geometry)), "properties": properties}
