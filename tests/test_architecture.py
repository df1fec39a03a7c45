"""The import rules of docs/architecture.md, checked in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys

import pytest

RULES = [
    ("napari_wsi_sam.slide", ["torch", "napari", "qtpy"]),
    ("napari_wsi_sam.model", ["napari", "qtpy", "tifffile", "zarr"]),
    ("napari_wsi_sam.assets", ["torch", "napari"]),
    ("napari_wsi_sam.annotations", ["torch", "napari", "qtpy"]),
    ("napari_wsi_sam.pipeline", ["napari", "qtpy"]),
    ("napari_wsi_sam.prompts", ["torch", "napari", "tifffile"]),
    ("napari_wsi_sam.train.trainer", ["napari", "qtpy"]),
    ("napari_wsi_sam.train.sampler", ["torch", "napari", "qtpy"]),
    ("napari_wsi_sam.train.prompt_noise", ["torch", "napari"]),
    ("napari_wsi_sam.train.datasets", ["torch", "napari"]),
    ("napari_wsi_sam.evaluation.runner", ["napari", "qtpy"]),
    ("napari_wsi_sam.evaluation.report", ["torch", "napari"]),
    ("napari_wsi_sam.model.registry", ["torch", "napari", "qtpy"]),
    ("napari_wsi_sam.model", ["torch"]),
    ("napari_wsi_sam.cli", ["torch", "napari", "qtpy"]),
    ("napari_wsi_sam.scale", ["numpy", "torch"]),
    ("napari_wsi_sam.windows", ["torch"]),
]


def test_importing_the_model_leaves_triton_alone():
    """The triton workaround belongs to napari processes only (napari_wsi_sam._triton)."""
    code = ("import sys, napari_wsi_sam.model.predictor; "
            "print('triton' in sys.modules and sys.modules['triton'] is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("module", "forbidden"), RULES)
def test_module_does_not_import(module, forbidden):
    code = (f"import sys, {module}; "
            f"print(','.join(m for m in {forbidden!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"
