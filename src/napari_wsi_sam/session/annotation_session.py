"""`AnnotationSession`: annotating one slide, without Qt.

It holds the slide, its object store and the label pyramids drawn from it, the selected
object, the classes, the model settings with their predictors and crop caches, and a queue of
requests. The napari widget builds controls and forwards to it; a script annotates headlessly
through the very same calls:

    session = AnnotationSession.open("slide.svs")
    session.run_now(BoxRequest(np.array([100, 200, 400, 500])))
    session.run_now(PointRequest(250, 300, positive=False))   # refines the new object
    session.export_objects("objects.geojson")

Requests run one at a time, in order (`submit` then `drain`, from one worker thread); reading
(selection, the store) is safe from any thread. Coordinates are level-0 slide pixels, (x, y).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PromptError, WsiSamError
from ..model import registry
from ..model.build import build_predictor
from ..pipeline import (
    Provenance,
    export_objects,
    image_of,
    import_objects,
    refine_batch,
    refine_stored,
    segment_prompt,
    store_segmented,
)
from ..pipeline.auto_grid import AutoSettings, segment_all
from ..pipeline.auto_region import AutoProgress, fit_region
from ..pipeline.embedding_store import attach as attach_embeddings
from ..prompts import Prompt
from ..scale import DEFAULT_HR_MPP, scale_text
from ..slide import CropPairCache, Slide, open_slide
from ..store.files import open_store
from ..store.object_store import ObjectStore, StoredObject
from ..store.rendering import ObjectRasters
from .classes import ClassRegistry
from .requests import (
    SEGMENT_ALL_METHODS,
    BatchRequest,
    BoxRequest,
    DeleteRequest,
    ImportRequest,
    Outcome,
    PointRequest,
    ReclassRequest,
    Request,
    RequestQueue,
    SegmentAllRequest,
    SyncRequest,
    UndoRequest,
)

logger = logging.getLogger(__name__)


class AnnotationSession:
    """One slide being annotated: its store, rasters, selection, classes, model and queue."""

    def __init__(self, slide: Slide, store: ObjectStore, *, rasters: ObjectRasters | None = None,
                 device: str = "auto") -> None:
        self.slide = slide
        self.store = store
        w, h = slide.dimensions
        self.rasters = rasters or ObjectRasters(store, shape=(h, w),
                                                downsamples=slide.downsamples)
        self.classes = ClassRegistry(store)
        self.current_class = "other"
        self.device = device
        self.hr_mpp = DEFAULT_HR_MPP
        self.threshold = 0.0
        self.choice, self.default_reason = registry.default_choice(self.hr_mpp)
        self.selected: int | None = None
        self.queue = RequestQueue()
        self._predictors: dict[tuple[str, str], Any] = {}
        self._predictors_lock = threading.RLock()  # the warm-up thread builds them too
        self._mobile: Any = None  # MobileSAM's parts, loaded once and shared
        self._crop_cache = CropPairCache()
        self._instance_model: Any = None
        self._tissue: Any = None
        self.rasters.sync()

    @classmethod
    def open(cls, slide: Slide | str | Path, *, folder: Path | None = None,
             mpp: float | None = None, device: str = "auto") -> AnnotationSession:
        """A session on a slide file (or an opened `Slide`) and its store (`open_store`)."""
        opened = slide if isinstance(slide, Slide) else open_slide(slide, mpp=mpp)
        return cls(opened, open_store(opened, folder=folder), device=device)

    def close(self) -> None:
        self.store.close()

    # ----------------------------------------------------------------- model and scale
    def set_model(self, choice: registry.ModelChoice) -> str | None:
        """Use `choice`; the HR scale follows its head. Returns a note when it changed."""
        self.choice = choice
        if choice.hr_mpp is not None and choice.hr_mpp != self.hr_mpp:
            self.hr_mpp = choice.hr_mpp
            return f"HR magnification set to {scale_text(self.hr_mpp)}, the head's own"
        return None

    def set_hr_mpp(self, hr_mpp: float, *, follow_default: bool) -> str | None:
        """A new HR µm/px. With `follow_default` the model becomes the measured default there;
        otherwise a head trained at another scale gives a one-line warning (it still runs)."""
        self.hr_mpp = float(hr_mpp)
        if follow_default:
            self.choice, self.default_reason = registry.default_choice(self.hr_mpp)
            return None
        return registry.scale_warning(self.choice, self.hr_mpp)

    def predictor(self) -> Any:
        """The predictor of the current model and device, loaded once (MobileSAM shared); it
        reads precomputed embeddings (`napari-wsi-sam precompute`) where there are some."""
        key = (self.choice.spec, self.device)
        with self._predictors_lock:
            if key not in self._predictors:
                parts = ({"mobile_sam": self.mobile_parts()}
                         if self.choice.base.weights == "mobile_sam" else None)
                self._predictors[key] = attach_embeddings(
                    build_predictor(self.choice, device=self.device, parts=parts))
            return self._predictors[key]

    def warm_up(self) -> None:
        """Load the current model and run it once on a blank crop pair (its encoder, its
        decoder graph: `WsiSamPredictor.warm_up`), so that the first prompt pays only the
        encoder. The widget calls it off the Qt thread when a slide opens or a model is
        picked; a prompt that comes meanwhile waits for it instead of loading twice."""
        self.predictor().warm_up()

    def mobile_parts(self) -> Any:
        """MobileSAM's frozen parts, loaded once and shared by every predictor and training."""
        with self._predictors_lock:
            return self._load_mobile()

    def _load_mobile(self) -> Any:
        if self._mobile is None:
            from ..model.sam import load_sam

            self._mobile = load_sam("mobile_sam", device="cpu")
        return self._mobile

    def provenance(self) -> Provenance:
        return Provenance.of(self.choice, hr_mpp=self.hr_mpp, threshold=self.threshold)

    # ----------------------------------------------------------------- selection
    def select(self, object_id: int | None) -> StoredObject | None:
        """Select an object (None: nothing); returns it."""
        if object_id is None:
            self.selected = None
            return None
        obj = self.store.get(object_id)
        self.selected = None if obj.deleted else obj.id
        return None if obj.deleted else obj

    def select_at(self, x: float, y: float) -> StoredObject | None:
        """The smallest object under (x, y); clicking again there walks out to the object
        that contains it, then back to the smallest. None (and no selection) on background."""
        hits = self.store.at_point(x, y)
        if not hits:
            return self.select(None)
        ids = [o.id for o in hits]
        if self.selected in ids:
            return self.select(ids[(ids.index(self.selected) + 1) % len(ids)])
        return self.select(ids[0])

    def selected_object(self) -> StoredObject | None:
        if self.selected is None:
            return None
        obj = self.store.get(self.selected)
        if obj.deleted:
            self.selected = None
            return None
        return obj

    def refine_points(self) -> tuple[np.ndarray, np.ndarray]:
        """The selected object's prompt points ((N, 2) level-0 x, y; (N,) labels 1/0)."""
        obj = self.selected_object()
        prompt = (obj.prompt or {}) if obj is not None else {}
        points = np.asarray(prompt.get("points") or np.zeros((0, 2)), float).reshape(-1, 2)
        labels = np.asarray(prompt.get("labels") or [], np.int64).reshape(-1)
        return points, labels

    # ----------------------------------------------------------------- the queue
    def submit(self, request: Request) -> int:
        """Queue a request (any thread); returns how many wait now."""
        return self.queue.put(request)

    def cancel(self) -> list[Request]:
        """Stop what runs after its current object; drop what waits (returned). What is
        submitted later runs."""
        return self.queue.cancel()

    def drain(self) -> Iterator[Outcome]:
        """Run queued requests in order until none is left (call from one worker thread)."""
        while (queued := self.queue.get()) is not None:
            ticket, request = queued
            yield from self.run(request, ticket=ticket)

    def run_now(self, request: Request) -> list[Outcome]:
        """Run one request at once (scripts, tests) and return its outcomes."""
        return list(self.run(request))

    def run(self, request: Request, *, ticket: int | None = None) -> Iterator[Outcome]:
        """Carry out one request; user errors become outcomes, nothing is half-done. A
        `cancel` after it began stops a batch or Segment all after the current object."""
        started = time.perf_counter()
        ticket = self.queue.ticket() if ticket is None else ticket

        def cancelled() -> bool:
            return self.queue.cancelled(ticket)

        try:
            if isinstance(request, BatchRequest):
                yield from self._batch(request, cancelled)
                return
            if isinstance(request, SegmentAllRequest):
                yield from self._segment_all(request, cancelled)
                return
            yield self._one(request, started)
        except WsiSamError as error:
            yield Outcome(request, str(error), error=True, touched=self._sync())

    def _one(self, request: Request, started: float) -> Outcome:
        if isinstance(request, BoxRequest):
            return self._segment(request, Prompt(box=request.box), started,
                                 refine=request.refine)
        if isinstance(request, PointRequest):
            points, labels = self.refine_points()
            obj = self.selected_object()
            box = None
            if obj is not None:
                recorded = (obj.prompt or {}).get("box")
                box = np.asarray(recorded if recorded is not None else obj.bounds, float)
            prompt = Prompt(box=box,
                            points=np.vstack([points, [[request.x, request.y]]]),
                            labels=np.append(labels, int(request.positive)))
            return self._segment(request, prompt, started, refine=obj is not None)
        if isinstance(request, ReclassRequest):
            name = self.classes.add(request.class_name)
            self.store.reclass(request.ids, name, color=self.classes.color(name))
            return Outcome(request, f"{len(request.ids)} object(s) now {name}",
                           touched=self._sync())
        if isinstance(request, DeleteRequest):
            count = self.store.delete(request.ids)
            if self.selected in request.ids:
                self.selected = None
            return Outcome(request, f"{count} object(s) deleted (Undo brings them back)",
                           touched=self._sync())
        if isinstance(request, UndoRequest):
            changes = self.store.redo() if request.redo else self.store.undo()
            verb = "redone" if request.redo else "undone"
            if not changes:
                return Outcome(request, f"nothing to {'redo' if request.redo else 'undo'}")
            ids = sorted({c.object_id for c in changes})
            if self.selected is not None and self.selected_object() is None:
                self.selected = None
            return Outcome(request, f"{len(changes)} change(s) {verb} on object(s) "
                           f"{', '.join(map(str, ids[:5]))}{'...' if len(ids) > 5 else ''}",
                           object_id=ids[-1], touched=self._sync())
        if isinstance(request, ImportRequest):
            ids, skipped = import_objects(self.store, request.path,
                                          default_class=self.current_class,
                                          image=image_of(self.slide))
            self.classes.reload()
            note = f"; skipped {len(skipped)}: {skipped[0]}" if skipped else ""
            return Outcome(request, f"{len(ids)} objects imported from {request.path.name}"
                           f"{note}", touched=self._sync())
        if isinstance(request, SyncRequest):
            self.classes.reload()
            return Outcome(request, "updated from changes made elsewhere", touched=self._sync())
        raise PromptError(f"unknown request {type(request).__name__}")

    # ----------------------------------------------------------------- segmentation
    def _segment(self, request: Request, prompt: Prompt, started: float, *,
                 refine: bool) -> Outcome:
        target = self.selected if refine else None
        if refine and target is None:
            raise PromptError("no object is selected to refine: click an object first")
        obj = segment_prompt(self.slide, prompt, self.predictor(), hr_mpp=self.hr_mpp,
                             threshold=self.threshold, crop_cache=self._crop_cache)
        provenance = self.provenance()
        if target is not None:
            version = refine_stored(self.store, target, obj, provenance=provenance)
            object_id, what = target, f"Object {target} version {version}"
        else:
            self.classes.ensure_stored(self.current_class)
            object_id = store_segmented(self.store, obj, class_name=self.current_class,
                                        provenance=provenance)
            what = f"Object {object_id}"
        self.selected = object_id
        raised = (f" (HR raised to {obj.crops.hr_mpp:.2f} µm/px to fit the box)"
                  if obj.crops.mpp_raised else "")
        message = (f"{what}: {self.choice.label}, {registry.SCORE_NAMES[obj.score_kind]} "
                   f"{obj.score:.2f}, {time.perf_counter() - started:.1f} s{raised}")
        return Outcome(request, message, object_id=object_id, touched=self._sync())

    def _batch(self, request: BatchRequest,
               cancelled: Callable[[], bool]) -> Iterator[Outcome]:
        items = list(request.items)
        if not items:
            raise PromptError("the batch has no shapes: draw or import some first")
        for name in {i.class_name or self.current_class for i in items}:
            self.classes.ensure_stored(name)
        steps = refine_batch(self.slide, items, self.predictor(), store=self.store,
                             hr_mpp=self.hr_mpp, provenance=self.provenance(),
                             default_class=self.current_class,
                             use_mask_prompts=request.use_mask_prompts,
                             crop_cache=self._crop_cache)
        errors = 0
        try:
            for step in steps:
                errors += step.error is not None
                text = step.error or (f"object {step.object_id}" + (
                    " (done before)" if step.skipped else ""))
                yield Outcome(request, f"Batch {step.done}/{step.total}: {text}",
                              error=step.error is not None, object_id=step.object_id,
                              touched=self._sync(), progress=(step.done, step.total),
                              seconds_left=step.seconds_left)
                if cancelled():
                    yield Outcome(request, f"Batch cancelled after {step.done} of "
                                  f"{step.total}: every object done is kept",
                                  progress=(step.done, step.total))
                    return
        finally:
            steps.close()
        if errors:
            yield Outcome(request, f"Batch done: {len(items) - errors} of {len(items)} gave "
                          f"an object ({errors} without one)", progress=(len(items),) * 2)

    def instance_model(self) -> Any:
        """The instance decoder Segment all uses: the registry's default at the session's
        magnification, else the best one at any; loaded once."""
        from ..model.instance_model import InstanceModel
        from ..model.instance_registry import default_instance_decoder

        entry = default_instance_decoder(self.hr_mpp) or default_instance_decoder()
        if entry is None:
            raise PromptError("no instance decoder is installed: pick the grid method for "
                              "Segment all, or train one (Train head, task instances)")
        if self._instance_model is None or self._instance_model.source != str(entry.path):
            self._instance_model = InstanceModel.load(entry.path,
                                                      device=self.predictor().device)
        return self._instance_model

    def _segment_all(self, request: SegmentAllRequest,
                     cancelled: Callable[[], bool]) -> Iterator[Outcome]:
        """Every object in the region, one outcome per tile or crop (its objects already
        stored, so a cancel keeps what was reported); the run is one change-log group: one
        undo."""
        from ..pipeline.auto_decoder import DecoderSettings, segment_all_decoder
        from ..slide.tissue import tissue_mask

        method = request.chosen_method
        if method not in SEGMENT_ALL_METHODS:
            raise PromptError(f"unknown Segment all method {method!r}; use one of "
                              f"{', '.join(SEGMENT_ALL_METHODS)}")
        region = fit_region(self.slide, request.region)  # off the slide: before the model
        self.classes.ensure_stored(self.current_class)
        if method == "decoder":
            model = self.instance_model()
            if request.settings is not None and not isinstance(request.settings,
                                                               DecoderSettings):
                raise PromptError("grid settings were given to the decoder method; ask for "
                                  "the grid method, or give DecoderSettings")
            settings = request.settings or DecoderSettings()
            refine = request.refine if request.refine is not None else bool(
                (model.settings.heldout or {}).get("refine_wins", False))
            settings = replace(settings, refine=refine)
            provenance = (replace(self.provenance(), hr_mpp=model.settings.hr_mpp) if refine
                          else Provenance("instance-decoder", model.name,
                                          hr_mpp=model.settings.hr_mpp))
            if self._tissue is None:
                self._tissue = tissue_mask(self.slide)
            steps = segment_all_decoder(self.slide, region, model, self.predictor(),
                                        store=self.store, class_name=self.current_class,
                                        settings=settings, provenance=provenance,
                                        tissue=self._tissue, crop_cache=self._crop_cache)
            unit = "tile"
        else:
            steps = segment_all(self.slide, region, self.predictor(), store=self.store,
                                class_name=self.current_class, hr_mpp=self.hr_mpp,
                                settings=request.settings if isinstance(
                                    request.settings, AutoSettings) else None,
                                provenance=self.provenance(), crop_cache=self._crop_cache)
            unit = "crop"
        step: AutoProgress | None = None
        try:
            for step in steps:
                yield Outcome(request, f"Segment all: {unit} {step.done}/{step.total}, "
                              f"{step.added} new objects so far", touched=self._sync(),
                              progress=(step.done, step.total),
                              seconds_left=step.seconds_left)
                if cancelled() and step.done < step.total:
                    yield Outcome(request, f"Segment all cancelled after {unit} {step.done} of "
                                  f"{step.total}: the {step.added} new objects so far are "
                                  "kept (Undo removes them)", progress=(step.done, step.total))
                    return
        finally:
            steps.close()
        if step is not None:
            yield Outcome(request, _segment_all_summary(step), progress=(step.total,) * 2)

    # ----------------------------------------------------------------- files and sync
    def export_objects(self, path: Path | str, *, classes: list[str] | None = None) -> int:
        """Every live object (of `classes`, when given) to a file in the format its suffix
        tells (QuPath GeoJSON, COCO, ASAP XML: `formats.registry`); how many."""
        return export_objects(self.store, Path(path), image=image_of(self.slide),
                              classes=classes)

    def changed_elsewhere(self) -> bool:
        """A cheap poll: True once after another viewer or process changed the store."""
        return self.store.changed_elsewhere()

    def _sync(self) -> tuple[str, ...]:
        return tuple(self.rasters.sync())

    def layer_levels(self, class_name: str) -> list[Any]:
        """The zarr levels of a class's labels (drawn on first use)."""
        return self.rasters.levels(class_name)

    def shown_classes(self) -> list[str]:
        """Classes that have live objects, in the registry's order."""
        live = self.store.live_classes()
        return [name for name in self.classes.names() if name in live]


def _segment_all_summary(step: AutoProgress) -> str:
    """The last line of a Segment all run: what it added, what it found there already."""
    there = f" ({len(step.found)} were there already)" if step.found else ""
    if not step.added:
        return f"Segment all: no new objects in the region{there}"
    return (f"Segment all: {step.added} new objects in the region{there}; "
            "Undo removes them all")
