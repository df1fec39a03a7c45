"""napari reader contribution: a slide file becomes one multiscale RGB layer in µm."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..slide import open_slide
from .slide_layer import slide_layer_data

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi")


def napari_get_reader(path: str | list[str]) -> Callable[[str], list[Any]] | None:
    """Claim one slide file by its suffix; anything else is not ours (None, never an error)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, str | Path) or not str(path).lower().endswith(SLIDE_SUFFIXES):
        return None
    return read_slide


def read_slide(path: str | list[str]) -> list[Any]:
    """Open the slide lazily; a broken file raises SlideError, which napari shows as one line."""
    if isinstance(path, list):
        path = path[0]
    return [slide_layer_data(open_slide(path))]
