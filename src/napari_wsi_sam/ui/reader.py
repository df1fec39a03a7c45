"""napari reader contribution: a slide (a file, a DICOM series folder or an OME-Zarr image)
becomes one multiscale RGB layer in µm."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import SlideError
from ..slide import open_slide
from ..slide.backends import OPENSLIDE_SUFFIXES, choose_backend
from .slide_layer import slide_layer_data

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", *OPENSLIDE_SUFFIXES)


def napari_get_reader(path: str | list[str]) -> Callable[[str], list[Any]] | None:
    """Claim one slide file by its suffix; anything else is not ours (None, never an error)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, str | Path):
        return None
    if str(path).lower().endswith(SLIDE_SUFFIXES) or _is_slide_folder(Path(path)):
        return read_slide
    return None


def _is_slide_folder(path: Path) -> bool:
    """An OME-Zarr image or a DICOM series folder (a labels-only zarr is napari-ome-zarr's)."""
    if not path.is_dir():
        return False
    try:
        return choose_backend(path) in ("ome-zarr", "openslide")
    except SlideError:
        return False


def read_slide(path: str | list[str]) -> list[Any]:
    """Open the slide lazily; a broken file raises SlideError, which napari shows as one line."""
    if isinstance(path, list):
        path = path[0]
    return [slide_layer_data(open_slide(path))]
