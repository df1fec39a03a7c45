"""The WSI-SAM dock widget: wires napari layers to the slide and crop machinery.

It keeps no logic of its own beyond choosing layers and converting napari's world coordinates
(through `_coords`); everything it computes, a script can compute with `slide` and `pipeline`.
Long work runs in napari thread workers so the viewer never freezes, and every error of ours
becomes one notification line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton
from napari.layers import Image, Shapes
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info

from ._coords import box_from_world_corners, box_to_world_corners
from ._layers import META_KEY, open_layer_slide, slide_path_of
from .errors import PromptError, WsiSamError
from .prompts import Prompt
from .slide import CropPair, concentric_crops

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

PROMPTS_LAYER = "WSI-SAM prompts"
FIELDS_LAYER = "WSI-SAM fields"
MAGNIFICATIONS = [("40x · 0.25 µm/px (nuclei)", 0.25), ("20x · 0.5 µm/px", 0.5),
                  ("10x · 1.0 µm/px", 1.0), ("5x · 2.0 µm/px", 2.0)]


class WsiSamWidget(Container):
    """Dock widget: pick a slide layer, draw boxes in the prompts layer, inspect the crops."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._slide_layer = ComboBox(label="Slide", choices=self._slide_layer_choices)
        self._mpp = FloatSpinBox(
            label="µm/px", value=0.0, min=0.0, max=100.0, step=0.001,
            tooltip="Pixel size at full resolution, only when the slide has none (0 = read it)",
        )
        self._magnification = ComboBox(label="HR magnification", choices=MAGNIFICATIONS, value=1.0,
                                       tooltip="LR context is always half of it (twice the µm/px)")
        self._slide_info = Label(value="")
        self._show_fields = PushButton(text="Show crop fields")
        self._status = Label(value="Draw a rectangle in the 'WSI-SAM prompts' layer.")
        super().__init__(widgets=[self._slide_layer, self._slide_info, self._mpp,
                                  self._magnification, self._show_fields, self._status])
        self._slide_layer.changed.connect(self._on_slide_layer)
        self._show_fields.changed.connect(self.show_crop_fields)
        viewer.layers.events.inserted.connect(self._refresh_choices)
        viewer.layers.events.removed.connect(self._refresh_choices)
        self._on_slide_layer(self._slide_layer.value)
        self.last_crops: CropPair | None = None

    # layers --------------------------------------------------------------------------------
    def _slide_layer_choices(self, _widget: Any = None) -> list[Image]:
        return [layer for layer in self._viewer.layers
                if isinstance(layer, Image) and slide_path_of(layer) is not None]

    def _refresh_choices(self, _event: Any = None) -> None:
        self._slide_layer.reset_choices()

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
        self.prompts_layer()

    def prompts_layer(self) -> Shapes:
        """The prompts shapes layer, made on first use with the slide layer's scale."""
        if PROMPTS_LAYER in self._viewer.layers:
            return self._viewer.layers[PROMPTS_LAYER]
        layer = self._viewer.add_shapes(name=PROMPTS_LAYER, edge_color="yellow",
                                        face_color="transparent", edge_width=4,
                                        **self._aligned_with_slide())
        layer.mode = "add_rectangle"
        return layer

    def _aligned_with_slide(self) -> dict[str, Any]:
        """Layer settings that put data coordinates on the slide's level-0 pixel grid."""
        slide = self._slide_layer.value
        if slide is None:
            return {}
        return {"scale": slide.scale, "translate": slide.translate, "units": slide.units}

    # crops ---------------------------------------------------------------------------------
    def current_box(self) -> np.ndarray:
        """The selected (else the newest) shape of the prompts layer as an XYXY level-0 box."""
        shapes = self.prompts_layer()
        if len(shapes.data) == 0:
            raise PromptError("the 'WSI-SAM prompts' layer is empty: draw a rectangle first")
        index = max(shapes.selected_data) if shapes.selected_data else len(shapes.data) - 1
        corners_data = np.asarray(shapes.data[index])[:, -2:]
        corners_world = corners_data * shapes.scale[-2:] + shapes.translate[-2:]
        slide_layer = self._require_slide_layer()
        return box_from_world_corners(corners_world, scale=slide_layer.scale,
                                      translate=slide_layer.translate)

    def _require_slide_layer(self) -> Image:
        layer = self._slide_layer.value
        if layer is None:
            raise PromptError("no slide layer: open a slide (File > Open) first")
        return layer

    def _user_mpp(self) -> float | None:
        return float(self._mpp.value) if self._mpp.value > 0 else None

    def show_crop_fields(self, _value: Any = None) -> None:
        """Cut the HR/LR crops for the current box (in a worker) and outline both fields."""
        try:
            layer = self._require_slide_layer()
            prompt = Prompt(box=self.current_box())
            slide = open_layer_slide(layer, mpp=self._user_mpp())
        except WsiSamError as error:
            show_error(str(error))
            return
        hr_mpp = float(self._magnification.value)
        self._status.value = "Cutting crops..."
        worker = _cut_crops(slide, prompt, hr_mpp)
        worker.returned.connect(self._show_fields_of)
        worker.errored.connect(self._report_error)
        worker.start()
        self._worker = worker

    def _show_fields_of(self, crops: CropPair | UserError) -> None:
        if isinstance(crops, UserError):
            self._status.value = crops.message
            show_error(crops.message)
            return
        self.last_crops = crops
        rectangles = []
        for crop in (crops.hr, crops.lr):
            size = crop.image.shape[0]
            corners = crop.map.to_slide(np.array([[0.0, 0.0], [size, size]]))
            # With the slide's own scale and translate, data coordinates are level-0 pixels
            # in napari's centre convention: the conversion at unit scale.
            rectangles.append(box_to_world_corners(corners.ravel(), scale=(1.0, 1.0)))
        if FIELDS_LAYER in self._viewer.layers:
            self._viewer.layers.remove(FIELDS_LAYER)
        self._viewer.add_shapes(rectangles, shape_type="rectangle", name=FIELDS_LAYER,
                                edge_color=["#ffd700", "#00e5ff"], face_color="transparent",
                                edge_width=8, **self._aligned_with_slide())
        padding = 1.0 - float(crops.hr.valid.mean())
        text = (f"HR {crops.hr_mpp:.2f} µm/px (yellow), LR {crops.lr.mpp:.2f} µm/px (cyan), "
                f"{padding:.0%} of HR is padding")
        if crops.hr_mpp != crops.hr_mpp_requested:
            text += f"; the box needed a coarser HR than {crops.hr_mpp_requested:.2f} µm/px"
        self._status.value = text
        show_info(text)

    def _report_error(self, error: Exception) -> None:
        """A bug, not a user error: napari already shows it with its traceback."""
        logger.error("crop worker failed", exc_info=error)
        self._status.value = f"unexpected error: {error!r}"


@dataclass(frozen=True)
class UserError:
    """A worker's user-facing error, returned as a value: raised (or returned as an exception)
    it would reach napari's error relay, which adds a traceback to a one-line message."""

    message: str


@thread_worker
def _cut_crops(slide: Any, prompt: Prompt, hr_mpp: float) -> CropPair | UserError:
    try:
        return concentric_crops(slide, prompt, hr_mpp=hr_mpp)
    except WsiSamError as error:
        return UserError(str(error))
