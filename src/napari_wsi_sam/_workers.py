"""Work the widget runs off the Qt thread, as napari thread workers.

User-facing errors come back as `UserError` values: superqt re-raises a worker's exception
(even a returned one) into napari's error relay, which adds a traceback to a one-line message.
Each worker writes to the label store before it returns, so every change is on disk when the
widget hears of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import thread_worker

from .annotations import LabelStore
from .errors import WsiSamError
from .model.registry import SCORE_NAMES
from .pipeline import CropPairCache, segment_prompt
from .pipeline.batch import BatchItem, BatchProgress, refine_batch
from .pipeline.objects import store_segmented
from .prompts import Prompt
from .slide import CropPair, Slide, concentric_crops


@dataclass(frozen=True)
class UserError:
    """A worker's user-facing error, returned as a value (one line, no traceback)."""

    message: str


@dataclass(frozen=True)
class Segmented:
    """What a segmentation worker did: the new object's id, the one it replaced, its time."""

    object_id: int
    replaced: int | None
    score: float
    hr_mpp: float
    seconds: float
    score_name: str = "score"


@dataclass(frozen=True)
class SegmentJob:
    """Everything one segmentation needs; built on the Qt thread, run in the worker."""

    slide: Slide
    prompt: Prompt
    store: LabelStore
    predictor_factory: Any
    model: str
    """The registry spec of the model (`ModelChoice.spec`), for messages and records."""
    hr_mpp: float
    threshold: float
    class_name: str
    color: str
    crop_cache: CropPairCache
    replace: int | None = None


@thread_worker
def cut_crops(slide: Slide, prompt: Prompt, hr_mpp: float) -> CropPair | UserError:
    try:
        return concentric_crops(slide, prompt, hr_mpp=hr_mpp)
    except WsiSamError as error:
        return UserError(str(error))


@thread_worker(progress={"total": 0})  # an indeterminate bar while the model works
def segment(job: SegmentJob) -> Segmented | UserError:
    """Segment one prompt and store it (replacing `job.replace`, the object being refined)."""
    started = time.perf_counter()
    try:
        predictor = job.predictor_factory()
        obj = segment_prompt(job.slide, job.prompt, predictor, hr_mpp=job.hr_mpp,
                             threshold=job.threshold, crop_cache=job.crop_cache)
        if job.replace is not None and job.replace in job.store.objects:
            job.store.remove_object(job.replace)
        object_id = store_segmented(job.store, obj, class_name=job.class_name,
                                    color=job.color, prompt=job.prompt)
    except WsiSamError as error:
        return UserError(str(error))
    return Segmented(object_id, job.replace, obj.score, obj.crops.hr_mpp,
                     time.perf_counter() - started, SCORE_NAMES[obj.score_kind])


def batch_worker(job: SegmentJob, items: Sequence[BatchItem], *,
                 use_mask_prompts: bool) -> Any:
    """A generator worker over `refine_batch`; each yield moves napari's progress bar."""

    @thread_worker(progress={"total": len(items)})
    def run() -> Iterator[BatchProgress | UserError]:
        try:
            predictor = job.predictor_factory()
            yield from refine_batch(job.slide, items, predictor, store=job.store,
                                    hr_mpp=job.hr_mpp,
                                    default_class=job.class_name, default_color=job.color,
                                    use_mask_prompts=use_mask_prompts,
                                    crop_cache=job.crop_cache)
        except WsiSamError as error:
            yield UserError(str(error))

    return run()
