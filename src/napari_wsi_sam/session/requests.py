"""What a user asks of an annotation session, and what comes back: plain, Qt-free values.

Requests are queued (`RequestQueue`) and run one at a time, in order, off the UI thread, so a
prompt drawn while the model is busy waits its turn instead of being dropped. Every request
gives one or more `Outcome`s: a one-line message, the object it made or changed, the layers
to redraw, and for batches the progress.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..pipeline.items import BatchItem

if TYPE_CHECKING:
    from ..pipeline.auto_decoder import DecoderSettings
    from ..pipeline.auto_grid import AutoSettings
    from ..polygons import Areal


@dataclass(frozen=True, eq=False)
class Request:
    """Base of every request. tag: anything the caller wants back in the outcome (the UI
    passes the shape a prompt came from, to mark it when the prompt fails)."""

    tag: Any = field(default=None, kw_only=True)


@dataclass(frozen=True, eq=False)
class BoxRequest(Request):
    """A box (XYXY, level-0 px): a new object, or with ``refine`` a new version of the
    selected one."""

    box: np.ndarray
    refine: bool = False


@dataclass(frozen=True, eq=False)
class PointRequest(Request):
    """A click (level-0 x, y): refines the selected object (or starts one from the point)."""

    x: float
    y: float
    positive: bool = True


@dataclass(frozen=True, eq=False)
class ReclassRequest(Request):
    ids: tuple[int, ...]
    class_name: str


@dataclass(frozen=True, eq=False)
class DeleteRequest(Request):
    ids: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class UndoRequest(Request):
    redo: bool = False


@dataclass(frozen=True, eq=False)
class BatchRequest(Request):
    """Refine many items (new objects, or new versions of the store objects they name)."""

    items: tuple[BatchItem, ...]
    use_mask_prompts: bool = False


SEGMENT_ALL_METHODS = ("decoder", "grid")
"""decoder: the instance decoder, one pass a tile (`pipeline.auto_decoder`); grid: point
prompts through the model (`pipeline.auto_grid`)."""


@dataclass(frozen=True, eq=False)
class SegmentAllRequest(Request):
    """Segment every object in a region (a shapely Polygon or MultiPolygon, level-0 px) as
    objects of the current class. method: `SEGMENT_ALL_METHODS` (None: grid when the settings
    are `AutoSettings`, else decoder); refine (decoder): each
    proposal through the session's model (None: what the decoder measured best held out);
    settings: `AutoSettings` (grid) or `DecoderSettings` (decoder), None: the defaults."""

    region: Areal
    settings: AutoSettings | DecoderSettings | None = None
    method: str | None = None
    refine: bool | None = None

    @property
    def chosen_method(self) -> str:
        """The method asked for; by default the one the settings are for, else decoder."""
        if self.method is not None:
            return self.method
        from ..pipeline.auto_grid import AutoSettings

        return "grid" if isinstance(self.settings, AutoSettings) else "decoder"


@dataclass(frozen=True, eq=False)
class ImportRequest(Request):
    """Store every outline of an annotation file (any format `formats.registry` reads) as an
    object."""

    path: Path


@dataclass(frozen=True, eq=False)
class SyncRequest(Request):
    """Redraw what other viewers or processes changed."""


@dataclass(frozen=True)
class Outcome:
    """One result of a request. error: the message is a user error (nothing was changed by
    this request). touched: layers (classes) redrawn. progress: (done, total) of a batch."""

    request: Request
    message: str
    error: bool = False
    object_id: int | None = None
    touched: tuple[str, ...] = ()
    progress: tuple[int, int] | None = None
    seconds_left: float | None = None


class RequestQueue:
    """First in, first out, shared between the UI thread (put) and a worker (get).

    Every request gets a ticket, in order; `cancel` cancels every ticket given so far, so a
    request queued after a cancel (a redraw the store's poll asks for, the user's next box)
    runs, and cannot revive the run that was cancelled."""

    def __init__(self) -> None:
        self._items: deque[tuple[int, Request]] = deque()
        self._lock = threading.Lock()
        self._issued = 0
        self._cancelled_through = 0

    def put(self, request: Request) -> int:
        """Queue a request; returns how many are waiting now."""
        with self._lock:
            self._items.append((self._next_ticket(), request))
            return len(self._items)

    def get(self) -> tuple[int, Request] | None:
        """The oldest waiting request and its ticket, or None."""
        with self._lock:
            return self._items.popleft() if self._items else None

    def ticket(self) -> int:
        """A ticket for a request run without queueing (`AnnotationSession.run`)."""
        with self._lock:
            return self._next_ticket()

    def cancel(self) -> list[Request]:
        """Cancel every ticket given so far; drop what waits (returned)."""
        with self._lock:
            self._cancelled_through = self._issued
            dropped = [request for _, request in self._items]
            self._items.clear()
            return dropped

    def cancelled(self, ticket: int) -> bool:
        return ticket <= self._cancelled_through

    def _next_ticket(self) -> int:
        self._issued += 1
        return self._issued

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
