"""The napari layers the plugin keeps beside a slide: prompts, points, and one labels layer per
class drawn from the object store.

All of them share the slide layer's scale and translate, so their data coordinates are the
slide's level-0 pixels in napari's centre convention (`coords` converts at unit scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.colormaps import DirectLabelColormap

from ..store.colors import as_rgba
from ..windows import Window
from .coords import slide_to_world
from .slide_layer import slide_path_of

if TYPE_CHECKING:
    import napari

    from ..session import AnnotationSession

PROMPTS_LAYER = "WSI-SAM prompts"
POINTS_LAYER = "WSI-SAM points"
FIELDS_LAYER = "WSI-SAM fields"
REGION_LAYER = "WSI-SAM region"
CLASS_LAYER_PREFIX = "WSI-SAM: "
CLASS_KEY = "napari_wsi_sam_class"
STORE_KEY = "napari_wsi_sam_store"
POSITIVE_COLOR = "#30e030"
NEGATIVE_COLOR = "#ff3030"
FAILED_COLOR = "#ff3030"
PROMPT_COLOR = "#ffff00"
REGION_COLOR = "#00e5ff"
HIGHLIGHT = [1.0, 1.0, 1.0, 1.0]
"""The selected object is drawn white in its class's layer."""


def aligned_with(slide_layer: Image | None) -> dict[str, Any]:
    """Layer settings that put data coordinates on the slide's level-0 pixel grid."""
    if slide_layer is None:
        return {}
    return {"scale": slide_layer.scale, "translate": slide_layer.translate,
            "units": slide_layer.units}


def xy_to_data(xy: np.ndarray) -> np.ndarray:
    """(N, 2) level-0 (x, y) -> (N, 2) (row, col) data coordinates of an aligned layer."""
    return slide_to_world(xy, scale=(1.0, 1.0))


def ensure_prompts_layer(viewer: napari.viewer.Viewer, slide_layer: Image | None) -> Shapes:
    if PROMPTS_LAYER in viewer.layers:
        return viewer.layers[PROMPTS_LAYER]
    layer = viewer.add_shapes(name=PROMPTS_LAYER, edge_color=PROMPT_COLOR,
                              face_color="transparent", edge_width=4,
                              **aligned_with(slide_layer))
    layer.mode = "add_rectangle"
    return layer


def ensure_region_layer(viewer: napari.viewer.Viewer, slide_layer: Image | None) -> Shapes:
    """The layer Segment all takes its region from, added on first use (drawing in the
    prompts layer would segment the region as one box)."""
    if REGION_LAYER in viewer.layers:
        return viewer.layers[REGION_LAYER]
    return viewer.add_shapes(name=REGION_LAYER, edge_color=REGION_COLOR,
                             face_color="transparent", edge_width=4,
                             **aligned_with(slide_layer))


def ensure_points_layer(viewer: napari.viewer.Viewer, slide_layer: Image | None) -> Points:
    """The selected object's refining points (green positive, red negative)."""
    if POINTS_LAYER in viewer.layers:
        return viewer.layers[POINTS_LAYER]
    return viewer.add_points(name=POINTS_LAYER, size=12, border_color="white",
                             features=pd.DataFrame({"positive": pd.Series([], dtype=bool)}),
                             face_color="positive",
                             face_color_cycle=[NEGATIVE_COLOR, POSITIVE_COLOR],
                             **aligned_with(slide_layer))


def show_points(layer: Points, xy: np.ndarray, labels: np.ndarray) -> None:
    """Show (N, 2) level-0 points with their labels (1 positive, 0 negative)."""
    with layer.events.data.blocker():
        layer.data = xy_to_data(np.asarray(xy, float).reshape(-1, 2))
        layer.features = pd.DataFrame({"positive": np.asarray(labels, bool).reshape(-1)})
    layer.refresh_colors()


def class_layer_name(class_name: str) -> str:
    return f"{CLASS_LAYER_PREFIX}{class_name}"


def class_layers(viewer: napari.viewer.Viewer) -> dict[str, Labels]:
    """The class layers in the viewer, by class."""
    return {layer.metadata[CLASS_KEY]: layer for layer in viewer.layers
            if isinstance(layer, Labels) and CLASS_KEY in layer.metadata}


def show_class(viewer: napari.viewer.Viewer, session: AnnotationSession, class_name: str,
               slide_layer: Image | None, *, outlines: bool) -> Labels:
    """The labels layer of one class (added over the store's rasters when missing)."""
    existing = class_layers(viewer).get(class_name)
    if existing is not None:
        return existing
    layer = viewer.add_labels(session.layer_levels(class_name), multiscale=True,
                              name=class_layer_name(class_name), opacity=0.9,
                              **aligned_with(slide_layer))
    layer.metadata[CLASS_KEY] = class_name
    layer.metadata[STORE_KEY] = str(session.store.path)
    layer.editable = False
    layer.contour = 2 if outlines else 0
    paint_colors(layer, session.classes.color(class_name), session.selected)
    return layer


def paint_colors(layer: Labels, color: object, selected: int | None) -> None:
    """Every object of the layer in its class colour; the selected one highlighted."""
    colors: dict[int | None, Any] = {None: as_rgba(color), 0: [0.0, 0.0, 0.0, 0.0]}
    if selected is not None:
        colors[int(selected)] = HIGHLIGHT
    layer.colormap = DirectLabelColormap(color_dict=colors)


def refresh(layer: Labels) -> None:
    """Make napari read the rasters again (napari 0.9 needs the data assigned again)."""
    layer.data = layer.data


def remove_stale_class_layers(viewer: napari.viewer.Viewer, keep: Sequence[str]) -> None:
    for name, layer in class_layers(viewer).items():
        if name not in keep:
            viewer.layers.remove(layer)


def keep_slides_below(viewer: napari.viewer.Viewer) -> None:
    """Slide layers opened after the annotation layers go beneath them."""
    ours = [i for i, layer in enumerate(viewer.layers) if _is_annotation(layer)]
    if not ours:
        return
    lowest = min(ours)
    for index, layer in enumerate(list(viewer.layers)):
        if index > lowest and isinstance(layer, Image) and slide_path_of(layer) is not None:
            viewer.layers.move(index, 0)


def _is_annotation(layer: Any) -> bool:
    return layer.name in (PROMPTS_LAYER, POINTS_LAYER, FIELDS_LAYER, REGION_LAYER) or (
        CLASS_KEY in getattr(layer, "metadata", {}))


def mark_shape(layer: Shapes, vertices: np.ndarray | None, color: str = FAILED_COLOR) -> bool:
    """Give the shape with these vertices another edge colour (a prompt that failed)."""
    if vertices is None:
        return False
    for index, data in enumerate(layer.data):
        if data.shape == vertices.shape and np.allclose(data, vertices):
            colors = np.asarray(layer.edge_color).copy()
            colors[index] = as_rgba(color)
            layer.edge_color = colors
            return True
    return False


def world_window(layer: Any, window: Window) -> np.ndarray:
    """(4, 2) (row, col) data corners of a level-0 window, for an aligned shapes layer."""
    x0, y0, x1, y1 = window
    return xy_to_data(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float))
