"""Work the widget runs off the Qt thread, as napari thread workers.

One worker at a time drains the session's request queue: each outcome is yielded back to the
Qt thread, which updates the layers. User-facing errors arrive as outcomes (or `UserError`
values), never as exceptions: superqt re-raises a worker's exception into napari's error
relay, which adds a traceback to a one-line message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import thread_worker

from ..errors import WsiSamError
from ..prompts import Prompt
from ..session import AnnotationSession, Outcome
from ..slide import CropPair, Slide, concentric_crops


@dataclass(frozen=True)
class UserError:
    """A worker's user-facing error, returned as a value (one line, no traceback)."""

    message: str


def drain_worker(session: AnnotationSession) -> Any:
    """A generator worker that runs the session's queue until it is empty (or cancelled)."""

    @thread_worker
    def run() -> Iterator[Outcome | UserError]:
        try:
            yield from session.drain()
        except WsiSamError as error:  # e.g. the weights went missing mid-run
            yield UserError(str(error))

    return run()


@thread_worker
def cut_crops(slide: Slide, prompt: Prompt, hr_mpp: float) -> CropPair | UserError:
    try:
        return concentric_crops(slide, prompt, hr_mpp=hr_mpp)
    except WsiSamError as error:
        return UserError(str(error))
