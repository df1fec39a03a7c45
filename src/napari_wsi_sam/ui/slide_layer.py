"""How a slide becomes a napari layer, and how a layer leads back to its slide.

The reader, the sample data, the `view` command and the widget all go through here, so a slide
layer always looks the same: multiscale, RGB, ``scale`` in µm per level-0 pixel, and the slide's
path and mpp in ``metadata["napari_wsi_sam"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..slide import Slide, open_slide

META_KEY = "napari_wsi_sam"


def slide_layer_data(slide: Slide) -> tuple[list[Any], dict[str, Any], str]:
    """A napari LayerDataTuple for `slide`: lazy levels, µm scale, provenance in metadata."""
    if slide.mpp is not None:
        scale = (slide.mpp[1], slide.mpp[0])
        units = ("um", "um")
    else:
        scale = (1.0, 1.0)
        units = ("pixel", "pixel")
    meta = {
        "slide_path": str(slide.path),
        "mpp": list(slide.mpp) if slide.mpp is not None else None,
        "vendor": slide.vendor,
        "backend": slide.backend,
        "objective_power": slide.objective_power,
        "dimensions": list(slide.dimensions),
    }
    kwargs = {
        "name": Path(slide.path).name,
        "multiscale": True,
        "rgb": True,
        "contrast_limits": (0, 255),
        "scale": scale,
        "units": units,
        "metadata": {META_KEY: meta},
    }
    return list(slide.levels), kwargs, "image"


def slide_path_of(layer: Any) -> Path | None:
    """The slide file behind a layer made by `slide_layer_data`, or None for any other layer."""
    meta = getattr(layer, "metadata", {}).get(META_KEY)
    return Path(meta["slide_path"]) if meta else None


def open_layer_slide(layer: Any, *, mpp: float | None = None) -> Slide:
    """Re-open the slide behind `layer` (cheap: opening is lazy), with `mpp` if it has none."""
    path = slide_path_of(layer)
    if path is None:
        from ..errors import SlideError

        raise SlideError(f"layer {getattr(layer, 'name', layer)!r} is not a slide opened by "
                         "napari-wsi-sam; open the slide file with File > Open")
    meta = layer.metadata[META_KEY]
    return open_slide(path, mpp=mpp, backend=meta.get("backend", "auto"))
