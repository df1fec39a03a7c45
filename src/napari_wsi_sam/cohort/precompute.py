"""``napari-wsi-sam precompute``: encode a slide's tissue ahead of time, so every first prompt
there costs only the decoder.

The tissue is found on a thumbnail (`slide.tissue`); the crop-grid nodes whose cells hold
tissue (`pipeline.crop_grid.grid_nodes`, the nodes prompts snap to) are sent to the workers
`NODES_PER_TASK` at a time; each worker encodes the HR and LR crops of its nodes and writes
them into the slide's embedding store (`pipeline.embedding_store`). Nodes already stored
are skipped, so a rerun finishes what a killed one left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import WsiSamError, one_line
from ..model.registry import ModelChoice
from ..slide import open_slide
from ..slide.crop_grid import grid_nodes
from ..slide.tissue import tissue_mask
from .executor import Executor, task_failure
from .worker import NodesDone, NodesTask, run_nodes

NODES_PER_TASK = 4


@dataclass
class PrecomputeReport:
    slide: str
    nodes: int = 0
    """Grid nodes on tissue."""
    computed: int = 0
    present: int = 0
    bytes: int = 0
    tissue: float = 0.0
    """Fraction of the slide that is tissue."""
    seconds: float = 0.0
    error: str = ""

    @property
    def bytes_per_node(self) -> float:
        return self.bytes / self.computed if self.computed else 0.0


def run_precompute(slides: list[Path], executor: Executor, *, choice: ModelChoice,
                   hr_mpp: float, mpp: float | None = None,
                   on_progress: Callable[[int], None] | None = None,
                   on_planned: Callable[[int], None] | None = None
                   ) -> list[PrecomputeReport]:
    """Store the encoder outputs of every tissue node of every slide; one report per slide."""
    reports = [PrecomputeReport(slide=str(path)) for path in slides]
    tasks: list[NodesTask] = []
    owners: list[int] = []
    started = [time.perf_counter()] * len(slides)
    for k, path in enumerate(slides):
        started[k] = time.perf_counter()
        try:
            with open_slide(Path(path).resolve(), mpp=mpp) as slide:
                slide.require_mpp()
                tissue = tissue_mask(slide)
                nodes = grid_nodes(slide, hr_mpp=hr_mpp, tissue=tissue)
                where = str(slide.path)
        except WsiSamError as error:
            reports[k].error = str(error)
            continue
        except OSError as error:
            reports[k].error = f"{error.strerror or one_line(error)} ({path})"
            continue
        reports[k].nodes, reports[k].tissue = len(nodes), tissue.fraction
        for first in range(0, len(nodes), NODES_PER_TASK):
            tasks.append(NodesTask(where, mpp, choice, hr_mpp,
                                   tuple(nodes[first:first + NODES_PER_TASK])))
            owners.append(k)
    if on_planned is not None:
        on_planned(sum(r.nodes for r in reports))
    for position, result in executor.run(run_nodes, tasks):
        report = reports[owners[position]]
        if isinstance(result, BaseException):
            report.error = report.error or task_failure(result)
            continue
        assert isinstance(result, NodesDone)
        report.computed += result.computed
        report.present += result.present
        report.bytes += result.bytes
        report.seconds = time.perf_counter() - started[owners[position]]
        if on_progress is not None:
            on_progress(result.computed + result.present)
    return reports
