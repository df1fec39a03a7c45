"""``napari-wsi-sam batch``: refine the prompts of many slides on a cluster.

The client plans each slide as `segment --prompts` does (`pipeline.batch.plan_batch`: fitted
items, resume keys, crop groups), sends one task per crop group to the workers, and stores
the outlines that come back itself, in the plan's order: a slide's objects get the ids, the
geometry and the resume keys a single-process run gives them, and each store has one writer.
Every object is stored (one transaction) as soon as its group and the groups before it are
back, so a killed client loses no stored object and a rerun skips them. A slide that cannot
run (unreadable, no pixel size, bad prompts, a failing task) is reported with its one-line
reason; the others go on. Slides are taken `SLIDES_IN_FLIGHT` at a time, so the client's
memory does not grow with the cohort.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import PromptError, StoreError, WsiSamError, one_line
from ..formats.registry import check_export_path
from ..model.registry import ModelChoice, resolve
from ..pipeline.batch import BatchPlan, plan_batch, store_result
from ..pipeline.items import Provenance, items_from_geojson
from ..pipeline.objects import Outline, ensure_classes, export_objects, image_of
from ..slide import Slide, open_slide
from ..store.files import open_store
from ..store.object_store import ObjectStore
from .executor import Executor, task_failure
from .manifest import CohortRow
from .report import SlideReport
from .worker import GroupTask, run_group

logger = logging.getLogger(__name__)

SLIDES_IN_FLIGHT = 16


@dataclass
class SlideJob:
    """One manifest row while it runs: its slide, store, plan and the groups still out."""

    row: CohortRow
    report: SlideReport
    slide: Slide | None = None
    store: ObjectStore | None = None
    plan: BatchPlan | None = None
    provenance: Provenance | None = None
    change_group: str = ""
    groups: int = 0
    """Crop groups sent to workers."""
    pending: dict[int, list] = field(default_factory=dict)
    committed: int = 0
    ids: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def fail(self, reason: str) -> None:
        self.report.status, self.report.error = "failed", reason
        logger.info("%s: %s", self.row.describe(), reason)

    @property
    def failed(self) -> bool:
        return self.report.status == "failed"

    def close(self) -> None:
        if not self.report.seconds:
            self.report.seconds = time.perf_counter() - self.started
        if self.store is not None:
            self.store.close()
        if self.slide is not None:
            self.slide.close()


def run_batch(rows: list[CohortRow], executor: Executor, *, force: bool = False,
              use_mask_prompts: bool = False,
              on_progress: Callable[[int], None] | None = None,
              on_warning: Callable[[str], None] | None = None) -> list[SlideReport]:
    """Refine every row's prompts; one report per row, in manifest order. on_progress(n):
    n more prompts finished; on_warning(line): e.g. a head used off its scale."""
    reports: list[SlideReport] = []
    for start in range(0, len(rows), SLIDES_IN_FLIGHT):
        chunk = rows[start:start + SLIDES_IN_FLIGHT]
        reports += _run_chunk(chunk, executor, force=force, use_mask_prompts=use_mask_prompts,
                              on_progress=on_progress or (lambda n: None),
                              on_warning=on_warning or (lambda line: None))
    return reports


def count_prompts(rows: list[CohortRow]) -> int:
    """How many prompts the rows' files hold (for a progress bar); unreadable files: 0."""
    total = 0
    for row in rows:
        if row.error is None and row.prompts is not None:
            try:
                total += len(items_from_geojson(row.prompts)[0])
            except WsiSamError:
                pass
    return total


def _run_chunk(rows: list[CohortRow], executor: Executor, *, force: bool,
               use_mask_prompts: bool, on_progress: Callable[[int], None],
               on_warning: Callable[[str], None]) -> list[SlideReport]:
    jobs: list[SlideJob] = []
    tasks: list[GroupTask] = []
    owners: list[tuple[int, int]] = []
    try:
        for row in rows:
            job = SlideJob(row, SlideReport(slide=str(row.slide), line=row.line,
                                            out=str(row.out or "")))
            jobs.append(job)
            for order, task in enumerate(_prepare(job, force=force,
                                                  use_mask_prompts=use_mask_prompts,
                                                  on_warning=on_warning)):
                tasks.append(task)
                owners.append((len(jobs) - 1, order))
            if not job.failed and job.groups == 0:
                _finish(job)
            on_progress(job.report.skipped + job.report.failed)
        for position, result in executor.run(run_group, tasks):
            index, order = owners[position]
            job = jobs[index]
            if job.failed:
                continue
            if isinstance(result, BaseException):
                job.fail(task_failure(result))
                continue
            job.pending[order] = result
            on_progress(len(result))
            while job.committed in job.pending:
                _commit(job, job.pending.pop(job.committed))
                job.committed += 1
            if job.committed == job.groups:
                _finish(job)
    finally:
        for job in jobs:
            job.close()
    return [job.report for job in jobs]


def _prepare(job: SlideJob, *, force: bool, use_mask_prompts: bool,
             on_warning: Callable[[str], None]) -> Iterator[GroupTask]:
    """Open and plan the row's slide; the tasks of its crop groups with work left. A row
    that cannot run is marked failed with its reason, and gives no task."""
    row, report = job.row, job.report
    if row.error is not None:
        job.fail(row.error)
        return
    try:
        assert row.prompts is not None and row.out is not None  # a row without error has them
        items, ignored = items_from_geojson(row.prompts)
        report.prompts, report.ignored = len(items), len(ignored)
        if not items:
            raise PromptError(f"{row.prompts.name} holds no Polygon or MultiPolygon "
                              f"({len(ignored)} features ignored)")
        check_export_path(row.out, flag="out")
        resolved = resolve(row.model, head=row.head, hr_mpp=row.hr_mpp)
        if resolved.warning:
            on_warning(f"{row.describe()}: {resolved.warning}")
        choice, hr_mpp = resolved.choice, resolved.hr_mpp
        job.slide = slide = open_slide(row.slide.resolve(), mpp=row.mpp)
        slide.require_mpp()
        job.store = store = open_store(slide)
        if store.read_only:
            raise StoreError(f"{store.path} is read-only; the objects need a writable store")
        ensure_classes(store, items, default_class=row.class_name)
        job.provenance = Provenance.of(choice, hr_mpp=hr_mpp)
        job.plan = plan = plan_batch(slide, items, store, provenance=job.provenance,
                                     hr_mpp=hr_mpp, use_mask_prompts=use_mask_prompts)
    except WsiSamError as error:
        job.fail(str(error))
        return
    except OSError as error:
        job.fail(f"{error.strerror or one_line(error)} ({error.filename or row.slide})")
        return
    job.change_group = store.new_group()
    report.failed = len(plan.errors)
    running: set[int] = set()
    for group in plan.groups:
        todo = plan.todo(group, force=force)
        running.update(todo)
        if todo:
            job.groups += 1
            yield _task(slide, row, choice, hr_mpp, group.center, plan, todo,
                        use_mask_prompts)
    for group in plan.groups:
        for index in group.indices:
            if index not in running:
                report.skipped += 1
                job.ids.append(plan.done_before[plan.keys[index]])


def _task(slide: Slide, row: CohortRow, choice: ModelChoice, hr_mpp: float,
          center: tuple[float, float] | None, plan: BatchPlan, todo: list[int],
          use_mask_prompts: bool) -> GroupTask:
    return GroupTask(slide=str(slide.path), mpp=row.mpp, choice=choice, hr_mpp=hr_mpp,
                     center=center, indices=tuple(todo),
                     items=tuple(plan.items[i] for i in todo),
                     use_mask_prompts=use_mask_prompts)


def _commit(job: SlideJob, results: list[tuple[int, Outline | str]]) -> None:
    """Store one group's outlines, each in its own transaction, in the plan's order."""
    assert job.store is not None and job.plan is not None and job.provenance is not None
    for index, result in results:
        if isinstance(result, str):
            job.report.failed += 1
            continue
        object_id = store_result(job.store, job.plan, index, result,
                                 provenance=job.provenance, default_class=job.row.class_name,
                                 group=job.change_group)
        job.ids.append(object_id)
        job.report.objects += 1


def _finish(job: SlideJob) -> None:
    """Export the slide's objects of this run (atomically), once all its groups are in."""
    assert job.store is not None and job.slide is not None and job.row.out is not None
    try:
        export_objects(job.store, job.row.out, image=image_of(job.slide), ids=job.ids)
    except WsiSamError as error:
        job.fail(f"{error}; the objects are kept in {job.store.path}")
        return
    job.report.seconds = time.perf_counter() - job.started
