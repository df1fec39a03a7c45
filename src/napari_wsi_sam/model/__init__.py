"""Model code: the frozen SAM parts (TinyViT encoder, prompt encoder, mask decoder), the WSI-SAM
head, weights, the predictor and the model registry.

Pure ``torch.nn`` modules; no napari, tifffile or zarr here. Importing this package imports
nothing heavy: the names below load their module (and torch) on first use, so the registry
(`model.registry`) can be read by the CLI and the widget without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ENCODER_CONFIGS": "encoder", "PIXEL_MEAN": "encoder", "PIXEL_STD": "encoder",
    "EncoderOutput": "encoder", "TinyViTSamEncoder": "encoder", "build_encoder": "encoder",
    "checkpoint_filter_fn": "encoder", "optimise_for_inference": "encoder",
    "preprocess": "encoder",
    "SamParts": "sam", "build_sam_parts": "sam", "load_sam": "sam",
    "WEIGHTS_ENV": "weights", "WEIGHTS_FILES": "weights", "WeightsStatus": "weights",
    "find_weights": "weights", "install_weights": "weights", "weights_status": "weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
