"""Where cohort tasks run: in this process, on a LocalCluster, or on a running dask cluster.

Every executor takes a list of tasks and yields (position, result or exception) as tasks
finish, in any order. A task whose worker dies is rescheduled by dask (up to its
``allowed-failures``); an exception a task raises is yielded, not raised, so one slide's
failure never stops the others.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from ..errors import UsageError, WsiSamError, one_line
from .worker import ModelPlugin, WorkerState, default_torch_threads

logger = logging.getLogger(__name__)


class Executor(Protocol):
    workers: int
    dashboard: str | None

    def run(self, fn: Callable[..., Any], tasks: Sequence[Any]
            ) -> Iterator[tuple[int, Any]]: ...


class InProcess:
    """Runs tasks one after the other in this process (``--workers 0``)."""

    workers = 0
    dashboard: str | None = None

    def __init__(self, *, device: str = "auto") -> None:
        self.state = WorkerState(device=device)

    def run(self, fn: Callable[..., Any], tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        for position, task in enumerate(tasks):
            try:
                yield position, fn(task, self.state)
            except Exception as error:  # a task's failure is its slide's, not the run's
                yield position, error

    def close(self) -> None:
        self.state.close()


class OnCluster:
    """Runs tasks on a dask.distributed cluster through `client`."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.workers = len(client.scheduler_info().get("workers", {}))
        self.dashboard = client.dashboard_link if _has_dashboard() else None

    def run(self, fn: Callable[..., Any], tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        from distributed import as_completed

        futures = {self.client.submit(fn, task, pure=False): position
                   for position, task in enumerate(tasks)}
        for future in as_completed(futures):
            position = futures[future]
            try:
                yield position, future.result()
            except Exception as error:
                yield position, error
            finally:
                future.release()


def _has_dashboard() -> bool:
    return importlib.util.find_spec("bokeh") is not None


@contextlib.contextmanager
def open_executor(*, workers: int | None, scheduler: str | None,
                  device: str = "auto") -> Iterator[Executor]:
    """An executor for the CLI's options: `scheduler` (an address or a scheduler file), else
    a LocalCluster of `workers` processes of one thread each (0: this process)."""
    if scheduler is not None and workers is not None:
        raise UsageError("give either --workers (a cluster on this machine) or --scheduler "
                         "(a running cluster), not both")
    if scheduler is None and workers == 0:
        executor = InProcess(device=device)
        try:
            yield executor
        finally:
            executor.close()
        return
    from distributed import Client, LocalCluster

    if logging.getLogger().getEffectiveLevel() > logging.INFO:  # not --verbose
        logging.getLogger("distributed").setLevel(logging.ERROR)
    cluster = None
    try:
        if scheduler is not None:
            client = _connect(Client, scheduler)
            threads = None
        else:
            count = workers if workers is not None else 2
            cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                                   dashboard_address=":0" if _has_dashboard() else None,
                                   silence_logs=logging.ERROR)
            client = Client(cluster)
            threads = default_torch_threads(count)
    except OSError as error:
        raise UsageError(f"cannot start or reach the dask cluster ({error})") from None
    try:
        client.register_plugin(ModelPlugin(device=device, torch_threads=threads))
        yield OnCluster(client)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _connect(client_type: Any, scheduler: str) -> Any:
    """A client of the cluster at `scheduler`: tcp://host:port, or a scheduler JSON file."""
    if scheduler.endswith(".json"):
        return client_type(scheduler_file=scheduler, timeout="30s")
    return client_type(scheduler, timeout="30s")


def task_failure(error: BaseException) -> str:
    """One line for a task that failed on a worker."""
    if isinstance(error, WsiSamError):
        return str(error)
    name = type(error).__name__
    if name == "KilledWorker":
        return ("the workers running it died repeatedly (out of memory?); rerun with fewer "
                "workers per machine")
    return f"internal error ({name}: {one_line(error)})"
