"""The dock's *Train head* section: a head from the objects you annotated, shown against SAM on
held-out objects before you use it.

Training runs in its own worker (prompts keep working meanwhile), reports epochs, loss and time
left, and stops on Cancel (the head in use stays). When it ends, the held-out Dice of the new
head and of SAM with boxes and with 3 points are shown, and *Use this head* installs it into
the model registry and selects it. All the work is `session.training`; this is the shell.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)
from napari.qt.threading import thread_worker

from ..errors import WsiSamError
from ..session import training
from ..session.own_head import TrainedHead
from ..session.own_instances import TrainedInstances
from .workers import UserError

if TYPE_CHECKING:
    from ..session import AnnotationSession
    from ..train.trainer import StepReport
    from .model_controls import ModelControls

POLL_MS = 500
HEAD = "head (prompts)"
INSTANCES = "instance decoder (Segment all)"


class Host(Protocol):
    """What the panel needs of the dock widget."""

    session: AnnotationSession | None
    models: ModelControls

    def require_session(self) -> AnnotationSession: ...

    def report(self, message: str, level: str = "info") -> None: ...


class TrainingPanel:
    """The controls of the Train head section, and the training worker."""

    def __init__(self, widget: Host) -> None:
        self.widget = widget
        self.task = ComboBox(name="train_task", label="Train", choices=[HEAD, INSTANCES],
                             value=HEAD,
                             tooltip="head: WSI-SAM for box and point prompts; instance "
                                     "decoder: what Segment all runs (annotate every object "
                                     "of the regions you annotate)")
        self.classes = Select(name="train_classes", label="Train on", choices=self._choices,
                              tooltip="The classes whose objects the head learns")
        self.more = FileEdit(name="train_more", label="More data",
                             mode=FileDialogMode.EXISTING_FILES, value=(),
                             tooltip="Other slides (their stores) or GeoJSON files of this "
                                     "slide")
        self.continue_from = CheckBox(name="train_continue", value=False,
                                      text="Continue from the head in use")
        self.epochs = SpinBox(name="train_epochs", label="Epochs", value=training.EPOCHS, min=1,
                              max=50, tooltip="Passes over the objects; 3 gives a first head "
                                              "in minutes on a laptop CPU")
        self.start_button = PushButton(name="train_head", text="Train head")
        self.use_button = PushButton(name="use_head", text="Use this head / decoder",
                                     enabled=False)
        self.bar = ProgressBar(name="train_progress", label="Training", value=0, min=0, max=1,
                               visible=False)
        self.result = Label(name="train_result", label="Held out", value="")
        self.result.native.setWordWrap(True)
        self.trained: TrainedHead | TrainedInstances | None = None
        self.worker: Any = None
        self._stop = threading.Event()
        self._last: StepReport | None = None
        self._timer: Any = None
        self.task.changed.connect(self._on_task)
        self.start_button.changed.connect(lambda _=None: self.start())
        self.use_button.changed.connect(lambda _=None: self.use())

    @property
    def widgets(self) -> list[Any]:
        return [self.task, self.classes, self.more, self.epochs, self.continue_from,
                self.start_button, self.bar, self.result, self.use_button]

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def _choices(self, _widget: Any = None) -> list[str]:
        session = self.widget.session
        return [] if session is None else session.shown_classes()

    def refresh(self) -> None:
        self.classes.reset_choices()

    def _on_task(self, task: str) -> None:
        """Each task's own default number of passes; a decoder never continues a head."""
        self.epochs.value = (training.INSTANCE_EPOCHS if task == INSTANCES
                             else training.EPOCHS)
        self.continue_from.enabled = task == HEAD

    # ----------------------------------------------------------------- training
    def start(self) -> None:
        """Train a head in a worker, from the chosen classes at the current magnification."""
        if self.worker is not None:
            self.widget.report("a head is being trained already; Cancel stops it", "info")
            return
        try:
            session = self.widget.require_session()
            classes = list(self.classes.value or [])
            value = self.more.value
            paths = value if isinstance(value, tuple | list) else [value]
            more = [Path(p) for p in paths if p is not None and str(p) not in ("", ".")]
            start_from = training.current_head(session) if self.continue_from.value else None
            if self.continue_from.value and start_from is None:
                raise WsiSamError("the model in use is no head of this magnification to "
                                  "continue from; untick 'Continue' or choose such a head")
        except WsiSamError as error:
            self.widget.report(str(error), "error")
            return
        epochs = int(self.epochs.value)
        instances = self.task.value == INSTANCES
        self._stop.clear()
        self._last = None
        self.use_button.enabled = False
        self.bar.visible, self.bar.max = True, 0

        @thread_worker
        def run() -> TrainedHead | TrainedInstances | UserError:
            try:
                if instances:
                    return training.train_instances(session, classes, more=more,
                                                    epochs=epochs, on_step=self._on_step,
                                                    should_stop=self._stop.is_set)
                return training.train_head(session, classes, more=more,
                                           continue_from=start_from, epochs=epochs,
                                           on_step=self._on_step,
                                           should_stop=self._stop.is_set)
            except WsiSamError as error:
                return UserError(str(error))

        worker = run()
        worker.returned.connect(self._done)
        worker.finished.connect(self._finished)
        self.worker = worker
        self._timer = self._poll()
        what = "an instance decoder" if instances else "a head"
        self.widget.report(f"Training {what} on {', '.join(classes) or 'nothing'} at "
                           f"{session.hr_mpp:g} µm/px: you can go on annotating", "info")
        worker.start()

    def cancel(self) -> bool:
        """Stop the run after its current step; True when one was running."""
        if self.worker is None:
            return False
        self._stop.set()
        return True

    def _on_step(self, report: StepReport) -> None:  # the worker's thread: just keep it
        self._last = report

    def _poll(self) -> Any:
        from qtpy.QtCore import QTimer

        timer = QTimer()
        timer.setInterval(POLL_MS)
        timer.timeout.connect(self._show_step)
        timer.start()
        return timer

    def _show_step(self) -> None:
        step = self._last
        if step is None:
            return
        self.bar.max, self.bar.value = max(step.steps, 1), min(step.step, step.steps)
        self.result.value = (f"epoch {step.epoch}/{step.epochs}, step {step.step}/{step.steps},"
                             f" loss {step.loss:.3f}, about {step.seconds_left / 60:.1f} min "
                             "left")

    def _done(self, outcome: TrainedHead | TrainedInstances | UserError) -> None:
        if isinstance(outcome, UserError):
            self.result.value = outcome.message
            self.widget.report(outcome.message, "error")
            return
        self.trained = outcome
        if isinstance(outcome, TrainedInstances):
            self.result.value = outcome.summary()
            self.use_button.enabled = True
            self.widget.report("Instance decoder trained and measured on held-out blocks; "
                               "Use this decoder puts it in the registry for Segment all",
                               "info")
            return
        self.result.value = outcome.summary()
        self.use_button.enabled = True
        advice = ("it beat SAM: Use this head makes it the default at this magnification"
                  if outcome.beats_sam else "it did not beat SAM here; SAM stays the default")
        self.widget.report(f"Head trained; {advice}", "info")

    def _finished(self) -> None:
        self.worker = None
        self.bar.visible = False
        if self._timer is not None:
            self._timer.stop()

    def use(self) -> None:
        """Install the head just trained and select it in the Model list."""
        session = self.widget.session
        if self.trained is None or session is None:
            self.widget.report("train a head first", "error")
            return
        if isinstance(self.trained, TrainedInstances):
            try:
                entry = training.install_instances(session, self.trained)
            except WsiSamError as error:
                self.widget.report(str(error), "error")
                return
            self.use_button.enabled = False
            self.widget.report(f"Installed instance decoder {entry.name} "
                               f"({self.trained.summary()}); Segment all uses the best held "
                               "out at its magnification", "info")
            return
        try:
            choice = training.install(session, self.trained)
        except WsiSamError as error:
            self.widget.report(str(error), "error")
            return
        self.widget.models.select(choice)
        self.use_button.enabled = False
        self.widget.report(f"Using {choice.label} ({self.trained.summary()})", "info")
