"""`Annotator`: keeps one slide's napari layers in step with its `AnnotationSession`.

What the user does in the viewer becomes a session request: a rectangle drawn in
'WSI-SAM prompts' segments it (the shape just drawn, even while another one is selected); a
click without dragging there selects the object under the cursor (clicking again walks out to
the object containing it); Shift+click adds a positive refining point to the selected object,
Alt+click (or Ctrl+click) a negative one, without switching layers or tools. Requests queue
while the model works and run in order in one worker; each outcome redraws only the class
layers it touched. A timer polls the store for changes made by other viewers or processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Shapes

from ..errors import WsiSamError
from ..session import AnnotationSession, BoxRequest, Outcome, PointRequest, Request, SyncRequest
from ..store.object_store import StoredObject
from . import layers as ui_layers
from .coords import box_from_world_corners, world_to_slide
from .workers import UserError, drain_worker

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

CLICK_PIXELS = 6
"""A rectangle smaller than this on screen (pixels) was a click, not a box."""
POLL_MS = 1000
"""How often the store is checked for changes made elsewhere."""

Report = Callable[[str, str], None]
"""(one-line message, level: "info", "warning" or "error")."""
ProgressFn = Callable[[int | None, int | None], None]
"""(done, total); (None, None): busy, no count; (0, 0): idle."""


class Annotator:
    """The layers of one slide, its session, and the worker that runs its requests."""

    def __init__(self, viewer: napari.viewer.Viewer, slide_layer: Image,
                 session: AnnotationSession, *, report: Report, progress: ProgressFn,
                 outlines: bool = True) -> None:
        self.viewer = viewer
        self.slide_layer = slide_layer
        self.session = session
        self.report = report
        self.progress = progress
        self.outlines = outlines
        self.live = True
        self.boxes_refine = False
        self.on_change: Any = None  # called after objects changed (the widget's class lists)
        self.last_box: np.ndarray | None = None
        self.worker: Any = None
        self.prompts = ui_layers.ensure_prompts_layer(viewer, slide_layer)
        self.points = ui_layers.ensure_points_layer(viewer, slide_layer)
        self.prompts.events.data.connect(self._on_shape)
        self.points.events.data.connect(self._on_points_layer)
        for name in session.shown_classes():
            self._class_layer(name)
        ui_layers.keep_slides_below(viewer)
        viewer.layers.selection.active = self.prompts
        self._timer = self._start_polling()

    # ----------------------------------------------------------------- requests
    def submit(self, request: Request) -> None:
        """Queue a request and make sure the worker runs."""
        waiting = self.session.submit(request)
        if self.worker is None:
            self._start_worker()
        elif waiting:
            self.report(f"queued ({waiting} waiting): WSI-SAM is still working", "info")

    def _start_worker(self) -> None:
        worker = drain_worker(self.session)
        worker.yielded.connect(self._on_outcome)
        worker.finished.connect(self._on_worker_done)
        self.worker = worker
        self.progress(None, None)
        worker.start()

    def _on_worker_done(self) -> None:
        self.worker = None
        if len(self.session.queue):  # requested while the worker was finishing
            self._start_worker()
            return
        self.progress(0, 0)

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def cancel(self) -> int:
        """Stop after the current object; queued prompts are dropped (their shapes marked).
        Returns how many were dropped."""
        dropped = self.session.cancel()
        for request in dropped:
            if isinstance(request, BoxRequest):
                ui_layers.mark_shape(self.prompts, request.tag)
        return len(dropped)

    # ----------------------------------------------------------------- the viewer
    def _on_shape(self, event: Any) -> None:
        if getattr(event, "action", None) != "added" or len(self.prompts.data) == 0:
            return
        index = len(self.prompts.data) - 1  # napari reports the shape just drawn as -1
        vertices = np.asarray(self.prompts.data[index])
        box = self._box_of(vertices)
        if self._is_click(vertices):
            with self.prompts.events.data.blocker():
                self.prompts.selected_data = {index}
                self.prompts.remove_selected()
            self.click(float((box[0] + box[2]) / 2), float((box[1] + box[3]) / 2))
            return
        self.last_box = box
        if self.live:
            self.submit(BoxRequest(box, refine=self.boxes_refine, tag=vertices.copy()))

    def _box_of(self, vertices: np.ndarray) -> np.ndarray:
        world = vertices[:, -2:] * self.prompts.scale[-2:] + self.prompts.translate[-2:]
        return box_from_world_corners(world, scale=self.slide_layer.scale,
                                      translate=self.slide_layer.translate)

    def _is_click(self, vertices: np.ndarray) -> bool:
        world = vertices[:, -2:] * self.prompts.scale[-2:]
        size = (world.max(axis=0) - world.min(axis=0)).max()
        scene = getattr(self.viewer, "scene", self.viewer)  # napari 0.9: viewer.scene.camera
        return bool(size * float(scene.camera.zoom) < CLICK_PIXELS)

    def click(self, x: float, y: float, modifiers: set[str] | None = None) -> None:
        """A click at level-0 (x, y): select (plain), positive point (Shift), negative point
        (Alt or Ctrl)."""
        held = _modifiers() if modifiers is None else modifiers
        if held & {"Alt", "Control"}:
            self.submit(PointRequest(x, y, positive=False))
        elif "Shift" in held:
            self.submit(PointRequest(x, y, positive=True))
        else:
            self.select(self.session.select_at(x, y))

    def _on_points_layer(self, event: Any) -> None:
        """A point added in 'WSI-SAM points' itself: positive, or negative with Shift."""
        if getattr(event, "action", None) != "added" or len(self.points.data) == 0:
            return
        world = np.asarray(self.points.data[-1])[-2:] * self.points.scale[-2:] + \
            self.points.translate[-2:]
        x, y = world_to_slide(world[None], scale=self.slide_layer.scale,
                              translate=self.slide_layer.translate)[0]
        negative = "Shift" in _modifiers()
        self.submit(PointRequest(float(x), float(y), positive=not negative))

    def select(self, obj: StoredObject | None) -> None:
        """Show the session's selection: highlighted in its layer, its points shown."""
        for name, layer in ui_layers.class_layers(self.viewer).items():
            ui_layers.paint_colors(layer, self.session.classes.color(name),
                                   self.session.selected)
        xy, labels = self.session.refine_points()
        ui_layers.show_points(self.points, xy, labels)
        if obj is None:
            self.report("Nothing selected: click an object to select it", "info")
            return
        parent = f", inside object {obj.parent}" if obj.parent is not None else ""
        self.report(f"Selected object {obj.id}: {obj.class_name}, version {obj.version}"
                    f"{parent}; Shift+click refines it, Alt+click removes a part", "info")

    # ----------------------------------------------------------------- outcomes
    def _on_outcome(self, outcome: Outcome | UserError) -> None:
        if isinstance(outcome, UserError):
            self.report(outcome.message, "error")
            return
        for name in outcome.touched:
            existed = name in ui_layers.class_layers(self.viewer)
            layer = self._class_layer(name)
            if existed:  # a layer just added reads the rasters itself; assigning its data
                ui_layers.refresh(layer)  # before its first draw aborts napari 0.9
        if outcome.error and isinstance(outcome.request, BoxRequest):
            ui_layers.mark_shape(self.prompts, outcome.request.tag)
        if outcome.progress is not None:
            self.progress(*outcome.progress)
        if outcome.touched and self.on_change is not None:
            self.on_change()
        if outcome.object_id is not None or outcome.touched:
            selected = self.session.selected_object()
            self.select(selected)
        self.report(outcome.message, "error" if outcome.error else "info")

    def _class_layer(self, name: str) -> Any:
        layer = ui_layers.show_class(self.viewer, self.session, name, self.slide_layer,
                                     outlines=self.outlines)
        ui_layers.keep_slides_below(self.viewer)
        if self.viewer.layers.selection.active is not self.prompts:
            self.viewer.layers.selection.active = self.prompts
        return layer

    def set_outlines(self, outlines: bool) -> None:
        self.outlines = outlines
        for layer in ui_layers.class_layers(self.viewer).values():
            layer.contour = 2 if outlines else 0

    def recolor(self) -> None:
        for name, layer in ui_layers.class_layers(self.viewer).items():
            ui_layers.paint_colors(layer, self.session.classes.color(name),
                                   self.session.selected)

    # ----------------------------------------------------------------- other viewers
    def _start_polling(self) -> Any:
        from qtpy.QtCore import QTimer

        timer = QTimer()
        timer.setInterval(POLL_MS)
        timer.timeout.connect(self.poll)
        timer.start()
        return timer

    def poll(self) -> bool:
        """Redraw what other viewers or processes changed; True when there was something."""
        try:
            changed = self.session.changed_elsewhere()
        except WsiSamError as error:
            self.report(str(error), "error")
            return False
        if changed:
            self.submit(SyncRequest())
        return changed

    def close(self) -> None:
        self._timer.stop()
        self.cancel()
        for signal, slot in ((self.prompts.events.data, self._on_shape),
                             (self.points.events.data, self._on_points_layer)):
            signal.disconnect(slot)


def _modifiers() -> set[str]:
    """The keyboard modifiers held now."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    held = QApplication.keyboardModifiers()
    names = {"Shift": Qt.KeyboardModifier.ShiftModifier,
             "Control": Qt.KeyboardModifier.ControlModifier,
             "Alt": Qt.KeyboardModifier.AltModifier,
             "Meta": Qt.KeyboardModifier.MetaModifier}
    return {name for name, flag in names.items() if held & flag}


def shapes_of(viewer: napari.viewer.Viewer) -> list[Shapes]:
    """Shapes layers a batch can take (not the crop-field outlines)."""
    return [layer for layer in viewer.layers
            if isinstance(layer, Shapes) and layer.name != ui_layers.FIELDS_LAYER]
