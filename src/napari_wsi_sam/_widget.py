# ruff: noqa: E402
"""The WSI-SAM dock widget: wires napari layers to the pipeline and the label store.

Draw a rectangle in 'WSI-SAM prompts' and the object is segmented (with "segment as I draw");
click in 'WSI-SAM points' to refine the newest object (Shift+click: a negative point). Objects
go into a label pyramid on disk beside the slide and show in 'WSI-SAM labels'. The widget keeps
no logic beyond choosing layers and converting napari's coordinates (`_coords`); everything it
does, a script can do with `pipeline` and `annotations`. Long work runs in thread workers.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._triton import keep_triton_out_without_a_gpu

keep_triton_out_without_a_gpu()  # before napari and the model load torchvision (see _triton)

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
    PushButton,
)
from napari.layers import Image, Shapes
from napari.utils.notifications import show_error, show_info, show_warning

from . import _widget_io as io
from ._annotation_layers import (
    FIELDS_LAYER,
    POINTS_LAYER,
    PROMPTS_LAYER,
    aligned_with,
    ensure_points_layer,
    ensure_prompts_layer,
    refresh_store_layer,
    show_store,
)
from ._coords import box_from_world_corners, box_to_world_corners, world_to_slide
from ._layers import META_KEY, open_layer_slide, slide_path_of
from ._workers import Segmented, SegmentJob, UserError, cut_crops, segment
from .annotations import LabelStore
from .annotations.colors import as_hex, as_rgb
from .errors import PromptError, WsiSamError
from .model import registry
from .pipeline import CropPairCache
from .pipeline.batch import BatchItem
from .prompts import Prompt
from .scale import DEFAULT_HR_MPP, MAGNIFICATIONS, magnification, mpp_text, same_scale
from .slide import CropPair

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

DEFAULT_CLASSES = {"tumour": "#e41a1c", "DCIS": "#984ea3", "stroma": "#4daf4a",
                   "necrosis": "#ff7f00", "other": "#ffff33"}
EXTRA_COLORS = ["#377eb8", "#a65628", "#f781bf", "#17becf", "#999999"]



def magnification_choice(mpp: float) -> tuple[str, float]:
    """A magnification list entry: ('10x · 1.0 µm/px', 1.0)."""
    name = magnification(mpp)
    return (name if name.endswith("µm/px") else f"{name} · {mpp_text(mpp)} µm/px"), mpp


__all__ = ["FIELDS_LAYER", "POINTS_LAYER", "PROMPTS_LAYER", "WsiSamWidget"]


class WsiSamWidget(Container):
    """Dock widget: a slide layer, prompts, and a persistent label store for its objects."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.classes = dict(DEFAULT_CLASSES)
        self.store: LabelStore | None = None
        self.last_crops: CropPair | None = None
        self.last_result: Segmented | None = None
        self._current: dict[str, Any] | None = None
        self._predictors: dict[tuple[str, str], Any] = {}
        self._crop_cache = CropPairCache()
        self._worker: Any = None
        self._slide_layer = ComboBox(label="Slide", choices=self._slide_layer_choices)
        self._slide_info = Label(value="")
        self._mpp = FloatSpinBox(label="µm/px", value=0.0, min=0.0, max=100.0, step=0.001,
                                 tooltip="Pixel size at full resolution, used only when the "
                                         "slide has none (0 = read it)")
        self._model_choices = {c.spec: c for c in registry.choices()}
        self._model_picked = False  # until the user picks one, the model follows the default
        self._quiet = False  # set while the widget itself changes model or magnification
        self._model = ComboBox(label="Model", choices=self._model_choice_list)
        self._head_file = FileEdit(label="Head file", mode=FileDialogMode.EXISTING_FILE,
                                   filter="*.pt", value=None,
                                   tooltip="A WSI-SAM head .pt (from train); it joins the "
                                           "model list and sets its magnification")
        self._magnifications = [magnification_choice(mpp) for _, mpp in MAGNIFICATIONS]
        self._magnification = ComboBox(label="HR magnification",
                                       choices=self._magnification_list,
                                       value=DEFAULT_HR_MPP, tooltip="LR context: half of it")
        self._threshold = FloatSpinBox(label="Mask threshold", value=0.0, min=-10.0, max=10.0,
                                       step=0.5, tooltip="Logit; higher gives smaller masks")
        self._device = ComboBox(label="Device", choices=["auto", "cpu", "cuda", "mps"],
                                value="auto")
        self._class = ComboBox(label="Class", choices=self._class_choices, value="other")
        self._new_class = LineEdit(label="New class", tooltip="Type a name, press Enter")
        self._class_color = LineEdit(label="Class colour", value=self.classes["other"],
                                     tooltip="#rrggbb of the chosen class")
        self._labels_folder = FileEdit(
            label="Labels folder", mode=FileDialogMode.EXISTING_DIRECTORY, value=None,
            tooltip="Where the label pyramid lives; empty: <slide name>.wsi-sam beside the slide")
        self._live = CheckBox(text="Segment as I draw", value=True)
        self._segment = PushButton(text="Segment")
        self._batch_layer = ComboBox(label="Batch layer", choices=self._shapes_layer_choices)
        self._batch_masks = CheckBox(text="Use shapes as mask prompts", value=False)
        self._batch = PushButton(text="Batch refine")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._undo = PushButton(text="Undo")
        self._export = PushButton(text="Export GeoJSON")
        self._import = PushButton(text="Import GeoJSON")
        self._show_fields = PushButton(text="Show crop fields")
        self._status = Label(value="Draw a rectangle in the 'WSI-SAM prompts' layer.")
        super().__init__(widgets=[
            self._slide_layer, self._slide_info, self._mpp, self._model, self._head_file,
            self._magnification,
            self._threshold, self._device, self._class, self._new_class, self._class_color,
            self._labels_folder,
            self._live,
            self._segment, self._batch_layer, self._batch_masks, self._batch, self._cancel,
            self._undo, self._export, self._import, self._show_fields, self._status])
        self._select_default_model()
        self._model.changed.connect(self._on_model)
        self._head_file.changed.connect(self._on_head_file)
        self._magnification.changed.connect(self._on_magnification)
        self._slide_layer.changed.connect(self._on_slide_layer)
        self._labels_folder.changed.connect(
            lambda _=None: self._on_slide_layer(self._slide_layer.value))
        self._new_class.changed.connect(self._add_class)
        self._class.changed.connect(
            lambda name: setattr(self._class_color, "value", self.classes.get(name, "")))
        self._class_color.changed.connect(self._set_class_color)
        self._segment.changed.connect(lambda _=None: self.segment_box())
        self._batch.changed.connect(lambda _=None: io.batch_refine(self))
        self._cancel.changed.connect(self.cancel)
        self._undo.changed.connect(self.undo)
        self._export.changed.connect(lambda _=None: io.export_geojson(self))
        self._import.changed.connect(lambda _=None: io.import_geojson(self))
        self._show_fields.changed.connect(self.show_crop_fields)
        viewer.layers.events.inserted.connect(self._refresh_choices)
        viewer.layers.events.removed.connect(self._refresh_choices)
        self._on_slide_layer(self._slide_layer.value)

    # ---------------------------------------------------------------- model and scale
    def _magnification_list(self, _widget: Any = None) -> list[tuple[str, float]]:
        return list(self._magnifications)

    def _model_choice_list(self, _widget: Any = None) -> list[tuple[str, str]]:
        return [(c.label, spec) for spec, c in self._model_choices.items()]

    def model_choice(self) -> registry.ModelChoice:
        """The registry's choice behind the Model list."""
        return self._model_choices[str(self._model.value)]

    def hr_mpp(self) -> float:
        return float(self._magnification.value)

    def _select_default_model(self) -> None:
        """The measured default at the current magnification (`registry.default_choice`)."""
        choice, reason = registry.default_choice(self.hr_mpp())
        self._quiet = True
        try:
            self._model.value = self._add_choice(choice)
        finally:
            self._quiet = False
        self._model.tooltip = (f"Default at {magnification(self.hr_mpp())}: {choice.label}, "
                               f"because {reason} (docs/results.md)")

    def _add_choice(self, choice: registry.ModelChoice) -> str:
        if choice.spec not in self._model_choices:
            self._model_choices[choice.spec] = choice
            self._model.reset_choices()
        return choice.spec

    def _on_model(self, _value: Any = None) -> None:
        if self._quiet:
            return
        self._model_picked = True
        trained = self.model_choice().hr_mpp
        if trained is not None and not same_scale(trained, self.hr_mpp()):
            self._set_magnification(trained)  # the scale follows the head
        self._model.tooltip = self.model_choice().base.summary

    def _on_head_file(self, value: Any = None) -> None:
        text = str(value or "").strip()
        if text in ("", "."):
            return
        try:
            head = registry.find_head(Path(text))
        except WsiSamError as error:
            self._report(str(error))
            return
        self._model.value = self._add_choice(registry.ModelChoice("wsi-sam", head=head))
        self._status.value = (f"Head {head.name}: {head.label}, HR "
                              f"{mpp_text(head.hr_mpp)} µm/px")

    def _set_magnification(self, mpp: float) -> None:
        if not any(same_scale(mpp, value) for _, value in self._magnifications):
            self._magnifications.append(magnification_choice(mpp))
            self._magnifications.sort(key=lambda item: item[1])
            self._magnification.reset_choices()
        value = next(v for _, v in self._magnifications if same_scale(mpp, v))
        self._quiet = True
        try:
            self._magnification.value = value
        finally:
            self._quiet = False

    def _on_magnification(self, _value: Any = None) -> None:
        if self._quiet:
            return
        if not self._model_picked:
            self._select_default_model()
            return
        warning = registry.scale_warning(self.model_choice(), self.hr_mpp())
        if warning:
            self._status.value = warning
            show_warning(warning)

    # ---------------------------------------------------------------- layers and state
    def _slide_layer_choices(self, _widget: Any = None) -> list[Image]:
        return [layer for layer in self._viewer.layers
                if isinstance(layer, Image) and slide_path_of(layer) is not None]

    def _shapes_layer_choices(self, _widget: Any = None) -> list[Shapes]:
        return [layer for layer in self._viewer.layers
                if isinstance(layer, Shapes) and layer.name != FIELDS_LAYER]

    def _class_choices(self, _widget: Any = None) -> list[str]:
        return list(self.classes)

    def _refresh_choices(self, _event: Any = None) -> None:
        self._slide_layer.reset_choices()
        self._batch_layer.reset_choices()

    def _add_class(self, name: str, *, select: bool = True) -> None:
        name = name.strip()
        if name and name not in self.classes:
            self.classes[name] = EXTRA_COLORS[len(self.classes) % len(EXTRA_COLORS)]
            self._class.reset_choices()
        if name and select:
            self._class.value = name

    def with_class_color(self, item: BatchItem) -> BatchItem:
        """`item` with its class's colour, adding a class the widget does not know yet."""
        if not item.class_name:
            return item
        self._add_class(item.class_name, select=False)
        return replace(item, color=as_rgb(self.classes[item.class_name]))

    def _set_class_color(self, value: str) -> None:
        """A '#rrggbb' typed for the chosen class; anything else is ignored until complete."""
        value = value.strip()
        if re.fullmatch(r"#[0-9a-fA-F]{6}", value):
            self.classes[str(self._class.value)] = value.lower()

    def _on_slide_layer(self, layer: Image | None) -> None:
        if layer is None:
            self._slide_info.value = "Open a slide (File > Open) to begin."
            return
        meta = layer.metadata[META_KEY]
        width, height = meta["dimensions"]
        mpp = meta["mpp"]
        mpp_text = f"{mpp[0]:.3f} µm/px" if mpp else "no pixel size: enter µm/px below"
        self._slide_info.value = f"{width:,} x {height:,} px · {mpp_text}"
        self._mpp.enabled = mpp is None
        self._current = None
        prompts = ensure_prompts_layer(self._viewer, layer)
        points = ensure_points_layer(self._viewer, layer)
        if self._on_prompt not in prompts.events.data.callbacks:
            prompts.events.data.connect(self._on_prompt)
        if self._on_point not in points.events.data.callbacks:
            points.events.data.connect(self._on_point)
        try:
            slide = open_layer_slide(layer)
            self.store = LabelStore.for_slide(slide, folder=self.labels_folder())
        except WsiSamError as error:
            self._report(str(error))
            return
        for record in self.store.objects.values():  # classes made on earlier days
            if record.class_name not in self.classes:
                self.classes[record.class_name] = as_hex(record.color)
        self._class.reset_choices()
        show_store(self._viewer, self.store, layer)
        self._viewer.layers.selection.active = prompts
        if self.store.objects:
            self._status.value = (f"{len(self.store.objects)} objects restored from "
                                  f"{self.store.folder}")

    def labels_folder(self) -> Path | None:
        """The chosen label-store folder, or None for the default beside the slide."""
        value = str(self._labels_folder.value or "").strip()
        return Path(value) if value not in ("", ".") else None

    def prompts_layer(self) -> Shapes:
        return ensure_prompts_layer(self._viewer, self._slide_layer.value)

    def require_slide_layer(self) -> Image:
        layer = self._slide_layer.value
        if layer is None:
            raise PromptError("no slide layer: open a slide (File > Open) first")
        return layer

    def open_slide(self) -> Any:
        mpp = float(self._mpp.value) if self._mpp.value > 0 else None
        return open_layer_slide(self.require_slide_layer(), mpp=mpp)

    def refresh_labels(self) -> None:
        if self.store is not None and "WSI-SAM labels" in self._viewer.layers:
            refresh_store_layer(self._viewer.layers["WSI-SAM labels"], self.store)

    # ---------------------------------------------------------------- prompts
    def current_box(self, index: int | None = None) -> np.ndarray:
        """Shape `index` (default: the selected, else the newest) as an XYXY level-0 box."""
        shapes = self.prompts_layer()
        if len(shapes.data) == 0:
            raise PromptError("the 'WSI-SAM prompts' layer is empty: draw a rectangle first")
        if index is None:
            index = max(shapes.selected_data) if shapes.selected_data else len(shapes.data) - 1
        corners_data = np.asarray(shapes.data[index])[:, -2:]
        corners_world = corners_data * shapes.scale[-2:] + shapes.translate[-2:]
        slide_layer = self.require_slide_layer()
        return box_from_world_corners(corners_world, scale=slide_layer.scale,
                                      translate=slide_layer.translate)

    def _on_prompt(self, event: Any) -> None:
        if event.action == "added" and self._live.value:
            self.segment_box()

    def _on_point(self, event: Any) -> None:
        if event.action != "added":
            return
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QApplication

        negative = bool(QApplication.keyboardModifiers() & Qt.KeyboardModifier.ShiftModifier)
        points = self._viewer.layers[POINTS_LAYER]
        positive = points.features["positive"].to_numpy(dtype=bool).copy()
        for index in event.data_indices:
            positive[index % len(positive)] = not negative
        points.features["positive"] = positive
        points.refresh_colors()
        if self._live.value:
            self.refine_with_points()

    def point_prompt(self) -> tuple[np.ndarray, np.ndarray]:
        """All points of the points layer: (N, 2) level-0 (x, y) and (N,) labels 1/0."""
        points = self._viewer.layers[POINTS_LAYER]
        if len(points.data) == 0:
            return np.zeros((0, 2)), np.zeros(0, np.int64)
        world = np.asarray(points.data)[:, -2:] * points.scale[-2:] + points.translate[-2:]
        slide_layer = self.require_slide_layer()
        xy = world_to_slide(world, scale=slide_layer.scale, translate=slide_layer.translate)
        labels = points.features["positive"].to_numpy(dtype=bool).astype(np.int64)
        return xy, labels

    # ---------------------------------------------------------------- segmentation
    def segment_box(self, index: int | None = None) -> None:
        """Segment a rectangle of the prompts layer as a new object."""
        try:
            prompt = Prompt(box=self.current_box(index))
        except WsiSamError as error:
            self._report(str(error))
            return
        points = self._viewer.layers[POINTS_LAYER]
        with points.events.data.blocker():
            points.data = np.zeros((0, 2))
        self._current = {"box": prompt.box, "id": None}
        self._run(prompt, replace=None)

    def refine_with_points(self) -> None:
        """Re-segment the newest object with its box and every point (or a new object from
        points alone when there is none)."""
        try:
            xy, labels = self.point_prompt()
            box = self._current["box"] if self._current else None
            prompt = Prompt(box=box, points=xy, labels=labels)
        except WsiSamError as error:
            self._report(str(error))
            return
        if self._current is None:
            self._current = {"box": None, "id": None}
        self._run(prompt, replace=self._current["id"])

    def _run(self, prompt: Prompt, *, replace: int | None) -> None:
        if self._worker is not None:
            self._report("WSI-SAM is still working on the last request; wait a moment")
            return
        try:
            job = self.make_job(prompt, replace=replace)
        except WsiSamError as error:
            self._report(str(error))
            return
        self._status.value = f"Segmenting with {job.model}..."
        worker = segment(job)
        worker.returned.connect(self._segmented)
        worker.finished.connect(self._worker_done)
        self._worker = worker
        worker.start()

    def make_job(self, prompt: Prompt, *, replace: int | None = None) -> SegmentJob:
        if self.store is None:
            raise PromptError("no label store: choose a slide layer first")
        name = str(self._class.value)
        return SegmentJob(
            slide=self.open_slide(), prompt=prompt, store=self.store,
            predictor_factory=self._predictor_factory(), model=self.model_choice().spec,
            hr_mpp=self.hr_mpp(), threshold=float(self._threshold.value),
            class_name=name, color=self.classes[name], crop_cache=self._crop_cache,
            replace=replace)

    def _predictor_factory(self) -> Any:
        # The model (torch and its native libraries) is imported here, on the Qt thread,
        # before any worker needs it; see _triton for why that matters.
        import napari_wsi_sam.model.predictor  # noqa: F401

        choice = self.model_choice()
        key = (choice.spec, str(self._device.value))

        def factory() -> Any:
            if key not in self._predictors:
                self._predictors[key] = registry.build_predictor(choice, device=key[1])
            return self._predictors[key]

        return factory

    def _segmented(self, result: Segmented | UserError) -> None:
        if isinstance(result, UserError):
            self._report(result.message)
            return
        self.last_result = result
        if self._current is not None:
            self._current["id"] = result.object_id
        self.refresh_labels()
        note = f" (HR raised to {result.hr_mpp:.2f} µm/px)" if result.hr_mpp > (
            self.hr_mpp() + 1e-9) else ""
        self._status.value = (f"Object {result.object_id}: {result.score_name} "
                              f"{result.score:.2f}, {result.seconds:.1f} s{note}")

    def _worker_done(self) -> None:
        self._worker = None
        self._cancel.enabled = False

    def cancel(self, _value: Any = None) -> None:
        if self._worker is not None and hasattr(self._worker, "quit"):
            self._worker.quit()
            self._status.value = "Cancelling: objects already done are kept."

    def undo(self, _value: Any = None) -> None:
        if self.store is None or self._worker is not None:
            return
        removed = self.store.undo()
        if removed is None:
            self._report("nothing to undo")
            return
        if self._current is not None and self._current["id"] == removed:
            self._current = None
        self.refresh_labels()
        self._status.value = f"Object {removed} removed"

    def _report(self, message: str) -> None:
        self._status.value = message
        show_error(message)

    # ---------------------------------------------------------------- crop fields
    def show_crop_fields(self, _value: Any = None) -> None:
        """Cut the HR/LR crops for the current box (in a worker) and outline both fields."""
        try:
            prompt = Prompt(box=self.current_box())
            slide = self.open_slide()
        except WsiSamError as error:
            self._report(str(error))
            return
        worker = cut_crops(slide, prompt, self.hr_mpp())
        worker.returned.connect(self._show_fields_of)
        worker.start()
        self._fields_worker = worker

    def _show_fields_of(self, crops: CropPair | UserError) -> None:
        if isinstance(crops, UserError):
            self._report(crops.message)
            return
        self.last_crops = crops
        rectangles = []
        for crop in (crops.hr, crops.lr):
            size = crop.image.shape[0]
            corners = crop.map.to_slide(np.array([[0.0, 0.0], [size, size]]))
            rectangles.append(box_to_world_corners(corners.ravel(), scale=(1.0, 1.0)))
        if FIELDS_LAYER in self._viewer.layers:
            self._viewer.layers.remove(FIELDS_LAYER)
        self._viewer.add_shapes(rectangles, shape_type="rectangle", name=FIELDS_LAYER,
                                edge_color=["#ffd700", "#00e5ff"], face_color="transparent",
                                edge_width=8, **aligned_with(self._slide_layer.value))
        padding = 1.0 - float(crops.hr.valid.mean())
        text = (f"HR {crops.hr_mpp:.2f} µm/px (yellow), LR {crops.lr.mpp:.2f} µm/px (cyan), "
                f"{padding:.0%} of HR is padding")
        if crops.mpp_raised:
            text += f"; the box needed a coarser HR than {crops.hr_mpp_requested:.2f} µm/px"
        self._status.value = text
        show_info(text)
