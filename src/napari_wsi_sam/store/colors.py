"""Class colours in the forms people and files give them, converted in one place.

Stores keep '#rrggbb'; GeoJSON carries (r, g, b) 0..255; napari takes (r, g, b, a) 0..1.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]
FALLBACK: RGB = (255, 255, 0)
"""Yellow: what an unreadable colour is shown as."""
DEFAULT_CLASSES = {"tumour": "#e41a1c", "DCIS": "#984ea3", "stroma": "#4daf4a",
                   "necrosis": "#ff7f00", "other": "#ffff33"}
"""The classes offered before any is stored, with their colours."""
EXTRA_COLORS = ["#377eb8", "#a65628", "#f781bf", "#17becf", "#999999"]
"""Colours of new classes, in turn."""


def palette_color(name: str, known: int) -> str:
    """A new class's colour: its default one, else the next extra colour after `known`."""
    return DEFAULT_CLASSES.get(name, EXTRA_COLORS[known % len(EXTRA_COLORS)])


def as_rgb(color: object) -> RGB | None:
    """A colour as (r, g, b) 0..255: from "#rrggbb" / "#rrggbbaa", (r, g, b[, a]) ints
    0..255, or floats 0..1 (napari's); None (logged) for anything else."""
    if isinstance(color, str):
        text = color.strip().lstrip("#")
        if len(text) in (6, 8):
            try:
                return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
            except ValueError:
                pass
    elif isinstance(color, tuple | list | np.ndarray) and len(color) in (3, 4):
        try:
            values = [float(v) for v in color[:3]]
        except (TypeError, ValueError):
            values = []
        floats = any(isinstance(v, float | np.floating) for v in color[:3])
        if values and floats and all(0.0 <= v <= 1.0 for v in values):
            values = [v * 255.0 for v in values]
        if values and all(0.0 <= v <= 255.0 for v in values):
            r, g, b = (round(v) for v in values)
            return r, g, b
    logger.info("colour %r is not (r, g, b) or #rrggbb", color)
    return None


def as_hex(color: object) -> str:
    """Any colour `as_rgb` reads as '#rrggbb' (yellow when unreadable)."""
    r, g, b = as_rgb(color) or FALLBACK
    return f"#{r:02x}{g:02x}{b:02x}"


def as_rgba(color: object, alpha: float = 1.0) -> list[float]:
    """Any colour `as_rgb` reads as napari's [r, g, b, a] 0..1 (yellow when unreadable)."""
    r, g, b = as_rgb(color) or FALLBACK
    return [r / 255.0, g / 255.0, b / 255.0, float(alpha)]
