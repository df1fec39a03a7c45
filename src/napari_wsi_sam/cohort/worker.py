"""What runs on a worker: its loaded models and open slides, and the two kinds of task.

A worker process keeps one `WorkerState` (through `ModelPlugin`, a dask WorkerPlugin), so a
model is loaded once per worker, not once per task, and a slide is opened once. Tasks only
compute: a crop group's outlines (`run_group`) or a batch of grid nodes' embeddings
(`run_nodes`); the client stores the outlines, so a store never has two writers from one run.
Without a cluster (``--workers 0``) the same functions run in the client with its own state.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model.registry import ModelChoice
from ..pipeline.batch import DECODER_BATCH, segment_group
from ..pipeline.embedding_store import SlideEmbeddings, attach
from ..pipeline.items import BatchItem
from ..pipeline.objects import Outline, outline_of
from ..prompts import Prompt
from ..slide import Slide, concentric_crops, open_slide
from ..slide.crop_grid import CropPairCache

logger = logging.getLogger(__name__)

PLUGIN_NAME = "napari-wsi-sam"
OPEN_SLIDES = 4


class WorkerState:
    """A worker's predictors (one per model choice) and its last few open slides."""

    def __init__(self, *, device: str = "auto", torch_threads: int | None = None) -> None:
        self.device = device
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self._predictors: dict[str, Any] = {}
        self._slides: OrderedDict[tuple[str, float | None], Slide] = OrderedDict()
        self.crop_cache = CropPairCache()

    def predictor(self, choice: ModelChoice) -> Any:
        if choice.spec not in self._predictors:
            from ..model.build import build_predictor

            self._predictors[choice.spec] = attach(build_predictor(choice, device=self.device))
        return self._predictors[choice.spec]

    def slide(self, path: str, mpp: float | None) -> Slide:
        key = (path, mpp)
        if key in self._slides:
            self._slides.move_to_end(key)
            return self._slides[key]
        slide = open_slide(Path(path), mpp=mpp)
        self._slides[key] = slide
        while len(self._slides) > OPEN_SLIDES:
            self._slides.popitem(last=False)[1].close()
        return slide

    def close(self) -> None:
        for slide in self._slides.values():
            slide.close()
        self._slides.clear()
        self._predictors.clear()


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency
    WorkerPlugin = object  # type: ignore[assignment,misc]


class ModelPlugin(WorkerPlugin):  # type: ignore[misc,valid-type]
    """Gives every worker of a cluster (those started later too) its `WorkerState`.

    device: "auto", "cpu", or "cuda" (a worker named by a number n gets GPU n modulo the
    GPUs it sees, so a LocalCluster of N workers on N GPUs gives each its own).
    torch_threads: intra-op threads per worker (a LocalCluster shares the machine's cores).
    """

    name = PLUGIN_NAME

    def __init__(self, *, device: str = "auto", torch_threads: int | None = None) -> None:
        self.device = device
        self.torch_threads = torch_threads
        self.state: WorkerState | None = None

    def setup(self, worker: Any) -> None:
        self.state = WorkerState(device=_device_of(worker, self.device),
                                 torch_threads=self.torch_threads)

    def teardown(self, worker: Any) -> None:
        if self.state is not None:
            self.state.close()


def _device_of(worker: Any, device: str) -> str:
    if device != "cuda":
        return device
    import torch

    count = torch.cuda.device_count()
    name = str(getattr(worker, "name", ""))
    return f"cuda:{int(name) % count}" if count and name.isdigit() else device


def worker_state() -> WorkerState:
    """The state of the worker this task runs on."""
    from distributed import get_worker

    plugin: ModelPlugin = get_worker().plugins[PLUGIN_NAME]  # type: ignore[assignment]
    if plugin.state is None:  # pragma: no cover - setup runs before any task
        raise RuntimeError("the napari-wsi-sam worker plugin was not set up")
    return plugin.state


# ---------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class GroupTask:
    """The items of one crop group of one slide, to segment on a worker."""

    slide: str
    mpp: float | None
    choice: ModelChoice
    hr_mpp: float
    center: tuple[float, float] | None
    indices: tuple[int, ...]
    """The items' positions in the slide's batch (what the results are keyed by)."""
    items: tuple[BatchItem, ...]
    use_mask_prompts: bool = False
    decoder_batch: int = DECODER_BATCH


def run_group(task: GroupTask, state: WorkerState | None = None
              ) -> list[tuple[int, Outline | str]]:
    """(index, outline or one-line error) for every item of the group, in the order the
    single-process batch stores them."""
    state = state or worker_state()
    slide = state.slide(task.slide, task.mpp)
    predictor = state.predictor(task.choice)
    out: list[tuple[int, Outline | str]] = []
    for results in segment_group(slide, task.items, range(len(task.items)), predictor,
                                 hr_mpp=task.hr_mpp, center=task.center,
                                 use_mask_prompts=task.use_mask_prompts,
                                 decoder_batch=task.decoder_batch,
                                 crop_cache=state.crop_cache):
        for local, result in results:
            out.append((task.indices[local],
                        result if isinstance(result, str) else outline_of(result)))
    return out


@dataclass(frozen=True)
class NodesTask:
    """Grid nodes of one slide whose HR and LR encoder outputs a worker computes and stores."""

    slide: str
    mpp: float | None
    choice: ModelChoice
    hr_mpp: float
    nodes: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class NodesDone:
    computed: int
    present: int
    """Nodes already in the store (an earlier or concurrent run made them)."""
    bytes: int
    seconds: float


def run_nodes(task: NodesTask, state: WorkerState | None = None) -> NodesDone:
    """Encode the HR and LR crops of each node not yet stored, and store them."""
    state = state or worker_state()
    started = time.perf_counter()
    slide = state.slide(task.slide, task.mpp)
    predictor = state.predictor(task.choice)
    base = task.choice.base.weights
    store = SlideEmbeddings(slide.path, _weights_of(predictor, base))
    computed = present = size = 0
    for center in task.nodes:
        if store.has(center, task.hr_mpp):
            present += 1
            continue
        crops = concentric_crops(slide, _on_slide(slide, center), hr_mpp=task.hr_mpp,
                                 center=center)
        outputs = {"hr": predictor.encode(crops.hr.image, base=base),
                   "lr": predictor.encode(crops.lr.image, base=base)}
        size += store.save(center, crops.hr_mpp, outputs)
        computed += 1
    return NodesDone(computed, present, size, time.perf_counter() - started)


def _on_slide(slide: Slide, center: tuple[float, float]) -> Prompt:
    """A point on the slide nearest `center`: crops need a prompt, a node may lie past the
    slide's edge (prompts near the edge snap to it; its crops are padded)."""
    width, height = slide.dimensions
    return Prompt.from_points([[min(max(center[0], 0.0), width - 1.0),
                                min(max(center[1], 0.0), height - 1.0)]])


def _weights_of(predictor: Any, base: str) -> str:
    from ..model.weights import weights_id

    return weights_id(base, predictor.parts(base).checkpoint)


def default_torch_threads(workers: int) -> int:
    """Intra-op threads for each of `workers` workers sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))
