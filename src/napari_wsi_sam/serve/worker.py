"""One FIFO worker thread per model: requests for a model wait their turn, never run over
each other, and the event loop stays free to answer (and refuse) others meanwhile.

Each worker builds its predictor on its first job and keeps it (with its embedding cache, so
nearby prompts on a slide pay only for the decoder). A full queue turns new requests away
with 503 rather than letting them pile up.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..errors import ServeError
from ..model.registry import ModelChoice
from ..slide.crop_grid import CropPairCache

logger = logging.getLogger(__name__)

Job = Callable[[Any, CropPairCache], Any]
"""A job gets the model's predictor and the worker's crop cache; its result or error goes to
the request's future."""


class ModelWorker:
    """The thread that runs every request for one model choice, in arrival order."""

    def __init__(self, choice: ModelChoice, *, device: str, max_queue: int) -> None:
        self.choice = choice
        self.device = device
        self._jobs: queue.Queue[tuple[Job, Future] | None] = queue.Queue(maxsize=max_queue)
        self._predictor: Any = None
        self._crops = CropPairCache(16)
        self.running: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"serve-{choice.spec}",
                                        daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    def submit(self, job: Job) -> Future:
        future: Future = Future()
        try:
            self._jobs.put_nowait((job, future))
        except queue.Full as error:
            raise ServeError(f"{self.choice.label} has {self._jobs.maxsize} requests waiting; "
                             "try again in a moment", status=503) from error
        return future

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, future = item
            if not future.set_running_or_notify_cancel():
                continue
            self.running = self.choice.label
            try:
                future.set_result(job(self._model(), self._crops))
            except BaseException as error:  # the request's error, answered by its route
                future.set_exception(error)
            finally:
                self.running = None

    def _model(self) -> Any:
        if self._predictor is None:
            from ..model.build import build_predictor

            logger.info("loading %s on %s", self.choice.label, self.device)
            self._predictor = build_predictor(self.choice, device=self.device)
        return self._predictor


class Workers:
    """The workers by model spec, made on first use."""

    def __init__(self, *, device: str = "auto", max_queue: int = 64) -> None:
        self.device = device
        self.max_queue = max_queue
        self._workers: dict[str, ModelWorker] = {}
        self._lock = threading.Lock()

    def submit(self, choice: ModelChoice, job: Job) -> Future:
        with self._lock:
            worker = self._workers.get(choice.spec)
            if worker is None:
                worker = self._workers[choice.spec] = ModelWorker(
                    choice, device=self.device, max_queue=self.max_queue)
        return worker.submit(job)

    def status(self) -> tuple[str | None, int]:
        """(what runs now, how many requests wait), for /sam/progress/."""
        with self._lock:
            workers = list(self._workers.values())
        running = ", ".join(w.running for w in workers if w.running) or None
        return running, sum(w.waiting for w in workers)

    def stop(self) -> None:
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            worker.stop()
