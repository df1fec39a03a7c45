"""Evaluation of prompted segmentation against ground truth, as in the paper's section 3.2.

The statistics and reporting half (``stats``, ``report``) is pure numpy/pandas/matplotlib and
never imports torch or napari. Names are re-exported lazily, so importing this package (or a
sibling runner module) does not pull in pandas or matplotlib until a name is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "bootstrap_ci": "stats",
    "paired_difference": "stats",
    "summarise": "stats",
    "box_table": "report",
    "plot_points": "report",
    "points_tables": "report",
    "prompt_table": "report",
    "to_markdown": "report",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
