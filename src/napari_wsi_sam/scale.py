"""Sizes and scales that slides, models, training and the UI share, defined once.

A magnification is a physical pixel size: 40x is 0.25 µm/px, 10x is 1.0 µm/px. WSI-SAM cuts a
``CROP_SIZE`` square HR crop and a concentric ``CROP_SIZE`` LR crop ``LR_FACTOR`` times
coarser; SAM's decoder gives mask logits on a ``LOW_RES`` square grid over each crop.
Pure Python: no numpy, torch or napari.
"""

from __future__ import annotations

CROP_SIZE = 1024
"""Side of the HR and LR crops (the encoder input), in pixels."""
LOW_RES = 256
"""Side of SAM's mask logits and mask prompts over one crop (a quarter of `CROP_SIZE`)."""
LR_FACTOR = 2.0
"""LR pixel size / HR pixel size (the paper: 10x HR, 5x LR)."""
DEFAULT_HR_MPP = 1.0
"""HR pixel size used when neither the user nor a head chose one: 10x."""

MAGNIFICATIONS: tuple[tuple[str, float], ...] = (
    ("40x", 0.25), ("20x", 0.5), ("10x", 1.0), ("5x", 2.0))
"""The magnifications offered everywhere, as (name, µm/px), finest first."""

SAME_SCALE_TOLERANCE = 0.02
"""Two pixel sizes within 2% of each other are the same magnification."""


def same_scale(a: float, b: float) -> bool:
    """True when pixel sizes `a` and `b` (µm/px) are the same magnification."""
    return abs(a - b) <= SAME_SCALE_TOLERANCE * max(abs(a), abs(b))


def standard_mpp(mpp: float) -> float | None:
    """The µm/px of the offered magnification `mpp` is (within 2%), else None."""
    for _, value in MAGNIFICATIONS:
        if same_scale(mpp, value):
            return value
    return None


def magnification(mpp: float) -> str:
    """'40x' for 0.25 µm/px (and the other offered ones); '0.3 µm/px' for anything else."""
    for name, value in MAGNIFICATIONS:
        if same_scale(mpp, value):
            return name
    return f"{mpp_text(mpp)} µm/px"


def scale_text(mpp: float) -> str:
    """'40x (0.25 µm/px)': the magnification with its pixel size, for messages."""
    name = magnification(mpp)
    return name if name.endswith("µm/px") else f"{name} ({mpp_text(mpp)} µm/px)"


def mpp_text(mpp: float) -> str:
    """A pixel size as people write it: 0.25, 0.5, 1.0, 2.0, 0.499."""
    text = f"{mpp:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text
