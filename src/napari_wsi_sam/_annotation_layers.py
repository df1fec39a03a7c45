"""The napari layers the widget keeps: prompts, points, and the label store shown as labels.

All of them share the slide layer's scale and translate, so their data coordinates are the
slide's level-0 pixels in napari's centre convention (`_coords` converts at unit scale).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.colormaps import DirectLabelColormap

from ._coords import slide_to_world
from .annotations import LabelStore
from .annotations.colors import as_rgba

if TYPE_CHECKING:
    import napari

PROMPTS_LAYER = "WSI-SAM prompts"
POINTS_LAYER = "WSI-SAM points"
LABELS_LAYER = "WSI-SAM labels"
IMPORTED_LAYER = "WSI-SAM imported"
FIELDS_LAYER = "WSI-SAM fields"
POSITIVE_COLOR = "#30e030"
NEGATIVE_COLOR = "#ff3030"


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
    layer = viewer.add_shapes(name=PROMPTS_LAYER, edge_color="yellow", face_color="transparent",
                              edge_width=4, **aligned_with(slide_layer))
    layer.mode = "add_rectangle"
    return layer


def ensure_points_layer(viewer: napari.viewer.Viewer, slide_layer: Image | None) -> Points:
    if POINTS_LAYER in viewer.layers:
        return viewer.layers[POINTS_LAYER]
    return viewer.add_points(name=POINTS_LAYER, size=12, border_color="white",
                             features=pd.DataFrame({"positive": pd.Series([], dtype=bool)}),
                             face_color="positive",
                             face_color_cycle=[NEGATIVE_COLOR, POSITIVE_COLOR],
                             **aligned_with(slide_layer))


def show_store(viewer: napari.viewer.Viewer, store: LabelStore,
               slide_layer: Image | None) -> Labels:
    """Add (or re-point) the labels layer at the store's zarr levels, lazily."""
    if LABELS_LAYER in viewer.layers:
        viewer.layers.remove(LABELS_LAYER)
    layer = viewer.add_labels(list(store.levels), name=LABELS_LAYER, multiscale=True,
                              opacity=0.5, **aligned_with(slide_layer))
    layer.metadata["napari_wsi_sam_store"] = str(store.folder)
    refresh_store_layer(layer, store)
    return layer


def refresh_store_layer(layer: Labels, store: LabelStore) -> None:
    """Make napari re-read the store (napari 0.9.2 needs the data assigned again) and show
    each object's class, model and score in the layer's features."""
    layer.data = layer.data
    objects = store.objects
    colors: dict[int | None, Any] = {None: "transparent", 0: "transparent"}
    colors.update({i: as_rgba(o.color) for i, o in objects.items()})
    layer.colormap = DirectLabelColormap(color_dict=colors)
    layer.features = pd.DataFrame({
        "index": list(objects),
        "class": [o.class_name for o in objects.values()],
        "model": [o.model for o in objects.values()],
        "score": [np.nan if o.score is None else o.score for o in objects.values()],
    })
