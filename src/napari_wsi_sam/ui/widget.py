"""The WSI-SAM dock widget: controls that forward to the slide's `AnnotationSession`.

Draw a rectangle in 'WSI-SAM prompts' and the object is segmented; click an object to select
it, Shift+click to add a positive point to it, Alt+click a negative one (`annotator`). Segment
all finds every object inside a shape drawn in 'WSI-SAM region'. Each class has its own labels
layer, drawn from the object store beside the slide. Every action here is a session request; a
script can do all of it through `session` without Qt.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
)
from napari.layers import Image, Shapes
from napari.utils.notifications import show_error, show_info, show_warning

from ..errors import PromptError, WsiSamError
from ..pipeline.items import items_from_store
from ..prompts import Prompt
from ..session import (
    AnnotationSession,
    BatchRequest,
    BoxRequest,
    DeleteRequest,
    ImportRequest,
    ReclassRequest,
    SegmentAllRequest,
    UndoRequest,
)
from ..slide import CropPair
from ..store.colors import as_hex
from ..store.files import open_store
from . import layers as ui_layers
from .annotator import Annotator, shapes_of
from .model_controls import ModelControls
from .shapes import region_of, shapes_to_items
from .slide_layer import META_KEY, open_layer_slide, slide_path_of
from .training_panel import TrainingPanel
from .workers import UserError, cut_crops

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

CLASS_OBJECTS = "__objects_of_the_class__"
"""The batch source 'objects of the chosen class' (refined in place, a new version each)."""
SEGMENT_ALL_CHOICES: dict[str, tuple[str, bool | None]] = {
    "decoder": ("decoder", False), "decoder + refine": ("decoder", True),
    "grid": ("grid", None)}
"""The Segment all choice -> (session method, refine)."""

__all__ = ["WsiSamWidget"]


class WsiSamWidget(Container):
    """Dock widget: the slide, the model, classes, and actions on the slide's objects."""

    warm_up_models: bool = True
    """Load and run the chosen model once in the background when a slide opens or another
    model or device is picked, so the first prompt pays no model loading (tests turn it off
    where they do not test it: each warm-up costs an encoder pass)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.session: AnnotationSession | None = None
        self.warm_worker: Any = None
        self.warming = False
        """True from a warm-up's start until it finished (tests and the status wait on it)."""
        self._warmed: tuple[int, str, str] | None = None
        self.annotator: Annotator | None = None
        self.last_crops: CropPair | None = None
        self._slide_layer = ComboBox(name="slide", label="Slide", choices=self._slide_layer_choices)
        self._slide_info = Label(name="slide_info", label="Size", value="")
        self._mpp = FloatSpinBox(name="mpp", label="µm/px", value=0.0, min=0.0, max=100.0,
                                 step=0.001,
                                 tooltip="Pixel size at full resolution, used only when the "
                                         "slide has none (0 = read it)")
        self.models = ModelControls(notify=self.report, changed=self._push_settings)
        self._threshold = FloatSpinBox(name="threshold", label="Mask threshold", value=0.0,
                                       min=-10.0, max=10.0,
                                       step=0.5, tooltip="Logit; higher gives smaller masks")
        self._device = ComboBox(name="device", label="Device",
                                choices=["auto", "cpu", "cuda", "mps"],
                                value="auto")
        self._class = ComboBox(name="class_name", label="Class", choices=self._class_choices,
                               value="other")
        self._new_class = LineEdit(name="new_class", label="New class",
                                   tooltip="Type a name, press Enter")
        self._class_color = LineEdit(name="class_color", label="Class colour",
                                     tooltip="#rrggbb of the chosen class")
        self._labels_folder = FileEdit(
            name="labels_folder", label="Labels folder",
            mode=FileDialogMode.EXISTING_DIRECTORY, value=None,
            tooltip="Where the object store lives; empty: <slide name>.wsi-sam beside the slide")
        self._live = CheckBox(name="live", text="Segment as I draw", value=True)
        self._boxes = ComboBox(name="boxes", label="A new box", choices=["makes a new object",
                                                           "refines the selected object"])
        self._segment = PushButton(text="Segment the last box")
        self._set_class = PushButton(text="Set class of selected")
        self._delete = PushButton(text="Delete selected")
        self._batch_layer = ComboBox(name="batch_source", label="Batch refine",
                                     choices=self._batch_choices)
        self._batch_masks = CheckBox(name="batch_masks", text="Use shapes as mask prompts",
                                     value=False)
        self._batch = PushButton(text="Batch refine")
        self._segment_all_method = ComboBox(
            name="segment_all_method", label="Segment all with",
            choices=list(SEGMENT_ALL_CHOICES), value="decoder",
            tooltip="decoder: the instance decoder, one pass a tile (fast); decoder + refine: "
                    "each proposal through the chosen model too; grid: a grid of point "
                    "prompts through the chosen model (slow)")
        self._segment_all = PushButton(
            text="Segment all",
            tooltip="Every object inside a region, as objects of the chosen class: draw a "
                    f"rectangle or polygon in the '{ui_layers.REGION_LAYER}' layer (the first "
                    "press adds it), then press. Takes the selected shapes, else the last "
                    "one. Cancel keeps the crops done; one Undo removes the whole run.")
        self._cancel = PushButton(text="Cancel")
        self._undo = PushButton(text="Undo")
        self._redo = PushButton(text="Redo")
        self._export = PushButton(text="Export objects…")
        self._import = PushButton(text="Import objects…")
        self._outlines = CheckBox(name="outlines", text="Outlines (touching objects stay apart)",
                                  value=True)
        self._show_fields = PushButton(text="Show crop fields")
        self.training = TrainingPanel(self)
        self._progress = ProgressBar(name="progress", value=0, min=0, max=1, visible=False)
        self._status = Label(name="status_line", label="Status",
                             value="Draw a rectangle in the 'WSI-SAM prompts' layer.")
        self._status.native.setWordWrap(True)  # long messages wrap; the dock keeps its width
        super().__init__(widgets=[
            self._slide_layer, self._slide_info, self._mpp, *self.models.widgets,
            self._threshold, self._device, self._class, self._new_class, self._class_color,
            self._labels_folder, self._live, self._boxes, self._segment, self._set_class,
            self._delete, self._batch_layer, self._batch_masks, self._batch,
            self._segment_all_method, self._segment_all, self._cancel, self._undo, self._redo,
            self._export, self._import, self._outlines,
            self._show_fields, *self.training.widgets, self._progress, self._status])
        self._connect()
        self._on_slide_layer(self._slide_layer.value)

    def _connect(self) -> None:
        self._slide_layer.changed.connect(self._on_slide_layer)
        self._labels_folder.changed.connect(lambda _=None: self._on_slide_layer(
            self._slide_layer.value))
        self._new_class.changed.connect(self._add_class)
        self._class.changed.connect(self._on_class)
        self._class_color.changed.connect(self._set_class_color)
        for control in (self._threshold, self._device, self._live, self._boxes):
            control.changed.connect(self._push_settings)
        self._segment.changed.connect(lambda _=None: self.segment())
        self._set_class.changed.connect(lambda _=None: self.set_class_of_selected())
        self._delete.changed.connect(lambda _=None: self.delete_selected())
        self._batch.changed.connect(lambda _=None: self.batch_refine())
        self._segment_all.changed.connect(lambda _=None: self.segment_all())
        self._cancel.changed.connect(lambda _=None: self.cancel())
        self._undo.changed.connect(lambda _=None: self.undo())
        self._redo.changed.connect(lambda _=None: self.redo())
        self._export.changed.connect(lambda _=None: self.export_objects())
        self._import.changed.connect(lambda _=None: self.import_objects())
        self._outlines.changed.connect(self._on_outlines)
        self._show_fields.changed.connect(lambda _=None: self.show_crop_fields())
        self._viewer.layers.events.inserted.connect(self._on_layers_changed)
        self._viewer.layers.events.removed.connect(self._on_layers_changed)

    def _on_outlines(self, on: Any) -> None:
        if self.annotator is not None:
            self.annotator.set_outlines(bool(on))

    # ---------------------------------------------------------------- status
    @property
    def status(self) -> str:
        return str(self._status.value)

    def report(self, message: str, level: str = "info") -> None:
        """One line in the dock, and a notification for warnings and errors."""
        self._status.value = message
        if level == "error":
            show_error(message)
        elif level == "warning":
            show_warning(message)

    def _show_progress(self, done: int | None, total: int | None) -> None:
        if done is None:  # busy without a count
            self._progress.visible, self._progress.max = True, 0
        elif total == 0:  # idle
            self._progress.visible = False
        else:
            self._progress.visible = True
            self._progress.max, self._progress.value = int(total or 1), int(done)

    # ---------------------------------------------------------------- slide and session
    def _slide_layer_choices(self, _widget: Any = None) -> list[Image]:
        return [layer for layer in self._viewer.layers
                if isinstance(layer, Image) and slide_path_of(layer) is not None]

    def _on_layers_changed(self, _event: Any = None) -> None:
        self._slide_layer.reset_choices()
        self._batch_layer.reset_choices()
        ui_layers.keep_slides_below(self._viewer)

    def _on_slide_layer(self, layer: Image | None) -> None:
        if self.annotator is not None:
            self.annotator.close()
            self.annotator = None
        if self.session is not None:
            self.session.close()
            self.session = None
        if layer is None:
            self._slide_info.value = "Open a slide (File > Open) to begin."
            return
        meta = layer.metadata[META_KEY]
        width, height = meta["dimensions"]
        mpp = meta["mpp"]
        mpp_text = f"{mpp[0]:.3f} µm/px" if mpp else "no pixel size: enter µm/px below"
        self._slide_info.value = f"{width:,} x {height:,} px · {mpp_text}"
        self._mpp.enabled = mpp is None
        try:
            import napari_wsi_sam.model.predictor  # noqa: F401  (torch on the Qt thread first)

            slide = open_layer_slide(layer, mpp=float(self._mpp.value) or None)
            self.session = AnnotationSession(slide, open_store(slide,
                                                              folder=self.store_folder()))
        except WsiSamError as error:
            self.report(str(error), "error")
            return
        self._push_settings()
        self.annotator = Annotator(self._viewer, layer, self.session, report=self.report,
                                   progress=self._show_progress,
                                   outlines=bool(self._outlines.value))
        self.annotator.on_change = self.training.refresh
        self._class.reset_choices()
        self._on_class(self._class.value)
        self.training.refresh()
        count = self.session.store.count()
        where = self.session.store.folder
        read_only = " (read-only: view and export only)" if self.session.store.read_only else ""
        self.report(f"{count} objects restored from {where}{read_only}" if count else
                    f"Objects are stored in {where}{read_only}", "info")

    def store_folder(self) -> Path | None:
        """The chosen store folder, or None for the default beside the slide."""
        value = str(self._labels_folder.value or "").strip()
        return Path(value) if value not in ("", ".") else None

    def require_session(self) -> AnnotationSession:
        if self.session is None or self.annotator is None:
            raise PromptError("no slide: open a slide (File > Open) first")
        mpp = float(self._mpp.value)
        if mpp > 0 and self.session.slide.mpp is None:
            self.session.slide = self.session.slide.with_mpp(mpp)
        return self.session

    def _push_settings(self, _value: Any = None) -> None:
        """Hand the controls' values to the session."""
        if self.session is None:
            return
        self.session.choice = self.models.choice()
        self.session.hr_mpp = self.models.hr_mpp()
        self.session.threshold = float(self._threshold.value)
        self.session.device = str(self._device.value)
        if self._class.value is not None:
            self.session.current_class = str(self._class.value)
        if self.annotator is not None:
            self.annotator.live = bool(self._live.value)
            self.annotator.boxes_refine = self._boxes.value.startswith("refines")
        self._warm_up()

    def _warm_up(self) -> None:
        """Warm the session's model up in a thread, once per slide, model and device."""
        session = self.session
        if session is None or not self.warm_up_models:
            return
        key = (id(session), session.choice.spec, session.device)
        if key == self._warmed:
            return
        self._warmed = key
        # a plain thread, not a Qt worker: napari may quit while it runs, and a Qt worker's
        # signals would then outlive their objects; not a daemon either, so Python waits the
        # few seconds it has left at exit instead of killing it inside torch (an abort).
        # A failure needs no report here: the first prompt meets it and says it in one line.
        worker = threading.Thread(target=self._run_warm_up, args=(session,),
                                  name="wsi-sam-warm-up")
        self.warm_worker, self.warming = worker, True
        worker.start()

    def _run_warm_up(self, session: AnnotationSession) -> None:
        try:
            session.warm_up()
        except Exception:
            logging.getLogger(__name__).info("model warm-up failed", exc_info=True)
        finally:
            if threading.current_thread() is self.warm_worker:
                self.warming = False

    # ---------------------------------------------------------------- classes
    def _class_choices(self, _widget: Any = None) -> list[str]:
        if self.session is None:
            from ..session import DEFAULT_CLASSES

            return list(DEFAULT_CLASSES)
        return self.session.classes.names()

    def _on_class(self, name: Any) -> None:
        if self.session is not None and name is not None:
            self._class_color.value = self.session.classes.color(str(name))
        self._push_settings()

    def _add_class(self, name: str) -> None:
        if self.session is None or not name.strip():
            return
        added = self.session.classes.add(name)
        self._class.reset_choices()
        self._class.value = added

    def _set_class_color(self, value: str) -> None:
        """A '#rrggbb' typed for the chosen class (ignored until complete)."""
        value = value.strip()
        if self.session is None or len(value) != 7 or as_hex(value) != value.lower():
            return
        self.session.classes.set_color(str(self._class.value), value)
        if self.annotator is not None:
            self.annotator.recolor()

    # ---------------------------------------------------------------- actions
    def _submit(self, make: Any) -> None:
        try:
            session = self.require_session()
            request = make(session)
        except WsiSamError as error:
            self.report(str(error), "error")
            return
        self.annotator.submit(request)  # type: ignore[union-attr]

    def segment(self) -> None:
        """Segment the rectangle drawn last (for when 'Segment as I draw' is off)."""
        def make(_session: AnnotationSession) -> BoxRequest:
            box = self.annotator.last_box if self.annotator else None
            if box is None:
                raise PromptError("no box yet: draw a rectangle in the 'WSI-SAM prompts' layer")
            return BoxRequest(box, refine=self._boxes.value.startswith("refines"))

        self._submit(make)

    def _selected(self, session: AnnotationSession) -> int:
        if session.selected_object() is None:
            raise PromptError("no object is selected: click one in the viewer first")
        return int(session.selected)  # type: ignore[arg-type]

    def set_class_of_selected(self) -> None:
        self._submit(lambda s: ReclassRequest((self._selected(s),), str(self._class.value)))

    def delete_selected(self) -> None:
        self._submit(lambda s: DeleteRequest((self._selected(s),)))

    def undo(self) -> None:
        self._submit(lambda _s: UndoRequest())

    def redo(self) -> None:
        self._submit(lambda _s: UndoRequest(redo=True))

    def cancel(self) -> None:
        """Stop what runs: prompts and batches (what is done stays), and head training (the
        head in use stays)."""
        if self.training.cancel():
            self.report("Cancelling the training: the head in use stays", "info")
        if self.annotator is not None and self.annotator.busy:
            dropped = self.annotator.cancel()
            extra = f"; {dropped} waiting prompt(s) dropped" if dropped else ""
            self.report(f"Cancelling: objects already done are kept{extra}", "info")

    def _batch_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [*((layer.name, layer) for layer in shapes_of(self._viewer)),
                ("objects of the chosen class (refined in place)", CLASS_OBJECTS)]

    def batch_refine(self, source: Shapes | str | None = None) -> None:
        """Refine every shape of a shapes layer into new objects, or every object of the
        chosen class into new versions of themselves."""
        source = source if source is not None else self._batch_layer.value
        masks = bool(self._batch_masks.value)

        def make(session: AnnotationSession) -> BatchRequest:
            if source == CLASS_OBJECTS:
                ids = session.store.ids(classes=[str(self._class.value)])
                items = items_from_store(session.store, ids)
            elif isinstance(source, Shapes) and len(source.data):
                slide_layer = self.annotator.slide_layer  # type: ignore[union-attr]
                items = shapes_to_items(source, slide_layer, with_masks=masks)
            else:
                items = []
            if not items:
                raise PromptError("nothing to refine: draw or import shapes, or choose a class "
                                  "that has objects")
            return BatchRequest(tuple(items), use_mask_prompts=masks or source == CLASS_OBJECTS)

        self._submit(make)

    def segment_all(self) -> None:
        """Segment every object inside the region drawn in the region layer; without one,
        add that layer, ready to draw, and say what to do."""
        if self.annotator is None:
            self.report("no slide: open a slide (File > Open) first", "error")
            return
        layer = ui_layers.ensure_region_layer(self._viewer, self.annotator.slide_layer)
        if len(layer.data) == 0:
            self._viewer.layers.selection.active = layer
            layer.mode = "add_rectangle"
            self.report(f"Draw a rectangle or polygon around the objects in "
                        f"'{layer.name}', then press Segment all again", "info")
            return
        slide_layer = self.annotator.slide_layer
        method, refine = SEGMENT_ALL_CHOICES[self._segment_all_method.value]
        self._submit(lambda _s: SegmentAllRequest(region_of(layer, slide_layer), method=method,
                                                  refine=refine))

    def export_objects(self, path: Path | None = None) -> Path | None:
        """Every live object to QuPath GeoJSON, COCO or ASAP XML by the suffix (asks for a
        path when none is given)."""
        try:
            session = self.require_session()
            if session.store.count() == 0:
                raise PromptError("no objects to export yet: segment something first")
            path = path or _ask_path(self, save=True)
            if path is None:
                return None
            count = session.export_objects(path)
        except WsiSamError as error:
            self.report(str(error), "error")
            return None
        self.report(f"{count} objects written to {path}", "info")
        show_info(self.status)
        return path

    def import_objects(self, path: Path | None = None) -> None:
        """Objects from an annotation file (GeoJSON, COCO, ASAP XML, GeoParquet, label
        image) into the store (holes and parts kept, classes kept)."""
        path = path or _ask_path(self, save=False)
        if path is not None:
            self._submit(lambda _s: ImportRequest(Path(path)))

    def show_crop_fields(self) -> None:
        """Cut the HR/LR crops around the last box (in a worker) and outline both fields."""
        try:
            session = self.require_session()
            box = self.annotator.last_box if self.annotator else None
            if box is None:
                raise PromptError("no box yet: draw a rectangle in the 'WSI-SAM prompts' layer")
        except WsiSamError as error:
            self.report(str(error), "error")
            return
        worker = cut_crops(session.slide, Prompt(box=box), session.hr_mpp)
        worker.returned.connect(self._show_fields_of)
        worker.start()
        self._fields_worker = worker

    def _show_fields_of(self, crops: CropPair | UserError) -> None:
        if isinstance(crops, UserError):
            self.report(crops.message, "error")
            return
        self.last_crops = crops
        rectangles = []
        for crop in (crops.hr, crops.lr):
            size = crop.map.size[0]
            corners = crop.map.to_slide(np.array([[0.0, 0.0], [size, size]]))
            x0, y0, x1, y1 = corners.ravel()
            rectangles.append(ui_layers.xy_to_data(np.array([[x0, y0], [x1, y0], [x1, y1],
                                                             [x0, y1]])))
        if ui_layers.FIELDS_LAYER in self._viewer.layers:
            self._viewer.layers.remove(ui_layers.FIELDS_LAYER)
        self._viewer.add_shapes(rectangles, shape_type="rectangle", name=ui_layers.FIELDS_LAYER,
                                edge_color=["#ffd700", "#00e5ff"], face_color="transparent",
                                edge_width=8,
                                **ui_layers.aligned_with(self._slide_layer.value))
        padding = 1.0 - float(crops.hr.valid.mean())
        text = (f"HR {crops.hr_mpp:.2f} µm/px (yellow), LR {crops.lr.mpp:.2f} µm/px (cyan), "
                f"{padding:.0%} of HR is padding")
        if crops.mpp_raised:
            text += f"; the box needed a coarser HR than {crops.hr_mpp_requested:.2f} µm/px"
        self.report(text, "info")


def _ask_path(widget: WsiSamWidget, *, save: bool) -> Path | None:
    from qtpy.QtWidgets import QFileDialog

    from ..formats.registry import dialog_filters

    dialog = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
    title = "Export objects" if save else "Import objects"
    name, _ = dialog(widget.native, title, "", ";;".join(dialog_filters(readable=not save)))
    return Path(name) if name else None
