"""The widget's file and batch actions: GeoJSON export and import, batch refine.

Kept apart from `_widget` so each file stays small; these functions take the widget and use
only its public state (`store`, `open_slide`, `make_job`, `refresh_labels`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from napari.layers import Shapes
from napari.utils.notifications import show_error, show_info
from shapely import affinity
from shapely.geometry import Point, Polygon

from ._annotation_layers import IMPORTED_LAYER, aligned_with, xy_to_data
from ._coords import world_to_slide
from ._workers import UserError, batch_worker
from .annotations import geometry_to_mask, read_geojson
from .errors import PromptError, WsiSamError
from .pipeline.batch import BatchItem, BatchProgress
from .pipeline.objects import export_geojson as export_store
from .prompts import Prompt

if TYPE_CHECKING:
    from ._widget import WsiSamWidget

logger = logging.getLogger(__name__)


def _ask_path(widget: WsiSamWidget, *, save: bool) -> Path | None:
    from qtpy.QtWidgets import QFileDialog

    dialog = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
    name, _ = dialog(widget.native, "GeoJSON", "", "GeoJSON (*.geojson *.json)")
    return Path(name) if name else None


def export_geojson(widget: WsiSamWidget, path: Path | None = None) -> Path | None:
    """Write every object of the store as QuPath-style GeoJSON (asks for a path if none)."""
    if widget.store is None or not widget.store.objects:
        _fail(widget, "no objects to export yet: segment something first")
        return None
    path = path or _ask_path(widget, save=True)
    if path is None:
        return None
    try:
        count = export_store(widget.store, path, mpp=widget.open_slide().mpp)
    except WsiSamError as error:
        _fail(widget, str(error))
        return None
    widget._status.value = f"{count} objects written to {path}"
    show_info(widget._status.value)
    return path


def import_geojson(widget: WsiSamWidget, path: Path | None = None) -> Shapes | None:
    """Read QuPath-style GeoJSON into the 'WSI-SAM imported' shapes layer, ready for batch."""
    path = path or _ask_path(widget, save=False)
    if path is None:
        return None
    try:
        result = read_geojson(path)
        slide_layer = widget.require_slide_layer()
    except WsiSamError as error:
        _fail(widget, str(error))
        return None
    shapes, classes = [], []
    for obj in result.objects:
        for part in getattr(obj.geometry, "geoms", [obj.geometry]):
            ring = np.asarray(part.exterior.coords)[:-1]
            shapes.append(xy_to_data(ring))
            classes.append(obj.class_name or "")
    if IMPORTED_LAYER in widget._viewer.layers:
        widget._viewer.layers.remove(IMPORTED_LAYER)
    layer = widget._viewer.add_shapes(
        shapes, shape_type="polygon", name=IMPORTED_LAYER, edge_color="#00e5ff",
        face_color="transparent", edge_width=4, features=pd.DataFrame({"class": classes}),
        **aligned_with(slide_layer))
    widget._batch_layer.reset_choices()
    widget._batch_layer.value = layer
    skipped = f"; skipped {len(result.skipped)}: {result.skipped[0]}" if result.skipped else ""
    widget._status.value = f"{len(shapes)} shapes imported from {path.name}{skipped}"
    show_info(widget._status.value)
    return layer


def shapes_to_items(layer: Shapes, slide_layer: Any, *, with_masks: bool) -> list[BatchItem]:
    """Every shape (rectangle, polygon, ellipse) as a box prompt in level-0 pixels, with its
    class from a 'class' feature and, optionally, its own mask as a mask prompt."""
    classes = layer.features["class"] if "class" in layer.features else None
    items = []
    for index, vertices in enumerate(layer.data):
        world = np.asarray(vertices)[:, -2:] * layer.scale[-2:] + layer.translate[-2:]
        xy = world_to_slide(world, scale=slide_layer.scale, translate=slide_layer.translate)
        box = np.concatenate([xy.min(axis=0), xy.max(axis=0)])
        mask = None
        if with_masks and len(xy) >= 3:
            outline = (_ellipse(xy) if layer.shape_type[index] == "ellipse"
                       else Polygon(xy).buffer(0))
            mask = geometry_to_mask(outline)
        name = str(classes.iloc[index]) if classes is not None else ""
        items.append(BatchItem(prompt=Prompt(box=box), class_name=name or None, mask=mask,
                               source=f"{layer.name}[{index}]"))
    return items


def _ellipse(corners_xy: np.ndarray) -> Polygon:
    """The ellipse napari draws inside its (4, 2) bounding-box corners, as a polygon."""
    (x0, y0), (x1, y1) = corners_xy.min(axis=0), corners_xy.max(axis=0)
    circle = Point((x0 + x1) / 2, (y0 + y1) / 2).buffer(1.0, quad_segs=32)
    return affinity.scale(circle, (x1 - x0) / 2, (y1 - y0) / 2)


def batch_refine(widget: WsiSamWidget, layer: Shapes | None = None) -> Any:
    """Refine every shape of the batch layer in a generator worker with progress and ETA."""
    layer = layer or widget._batch_layer.value
    if widget._worker is not None:
        _fail(widget, "WSI-SAM is still working on the last request; wait or cancel")
        return None
    try:
        if layer is None or len(layer.data) == 0:
            raise PromptError("the batch layer has no shapes: draw or import some first")
        items = [widget.with_class_color(item) for item in
                 shapes_to_items(layer, widget.require_slide_layer(),
                                 with_masks=bool(widget._batch_masks.value))]
        job = widget.make_job(Prompt(box=items[0].prompt.box))
    except WsiSamError as error:
        _fail(widget, str(error))
        return None
    worker = batch_worker(job, items, use_mask_prompts=bool(widget._batch_masks.value))
    started = time.perf_counter()
    summary = {"done": 0, "errors": 0}

    def on_progress(progress: BatchProgress | UserError) -> None:
        if isinstance(progress, UserError):
            _fail(widget, progress.message)
            return
        summary["done"] = progress.done
        summary["errors"] += progress.error is not None
        eta = "" if progress.seconds_left is None else f", about {progress.seconds_left:.0f} s left"
        widget._status.value = f"Batch: {progress.done}/{progress.total}{eta}"
        widget.refresh_labels()

    def on_finished() -> None:
        widget.refresh_labels()
        errors = f", {summary['errors']} without an object" if summary["errors"] else ""
        widget._status.value = (f"Batch: {summary['done']}/{len(items)} done in "
                                f"{time.perf_counter() - started:.1f} s{errors}")
        widget._worker_done()

    worker.yielded.connect(on_progress)
    worker.finished.connect(on_finished)
    widget._worker = worker
    widget._cancel.enabled = True
    worker.start()
    return worker


def _fail(widget: WsiSamWidget, message: str) -> None:
    widget._status.value = message
    show_error(message)
