"""The WSI-SAM head shipped inside the package, and the measured rule for the default model.

Torch-free, so the widget can choose its default model without loading torch.
``heads/hgsc_nuclei.pt`` was trained by the commands in docs/results.md. ``heads/default.json``
records its held-out comparison with SAM and the resulting default: the widget and the CLI
default to "wsi-sam" only when the head was at least as good as SAM on the held-out set,
else to "sam" (docs/results.md says why).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import WeightsError

HEADS = Path(__file__).parent / "heads"
SHIPPED_HEAD = HEADS / "hgsc_nuclei.pt"
DECISION = HEADS / "default.json"


def default_head() -> Path | None:
    """The shipped head when installed, else None (a fresh head, whose masks equal SAM's)."""
    return SHIPPED_HEAD if SHIPPED_HEAD.exists() else None


def shipped_head_path() -> Path:
    """The shipped head's file; WeightsError when the installation lacks it."""
    if not SHIPPED_HEAD.exists():
        raise WeightsError(f"the shipped WSI-SAM head {SHIPPED_HEAD.name} is missing from this "
                           "installation; reinstall napari-wsi-sam or pass a head file")
    return SHIPPED_HEAD


@lru_cache(maxsize=1)
def default_decision() -> dict[str, Any]:
    """The recorded comparison: default_model, the held-out Dice of both models, the rule."""
    try:
        decision = json.loads(DECISION.read_text())
    except (OSError, json.JSONDecodeError):
        return {"default_model": "sam", "reason": "no measured decision is installed"}
    if decision.get("default_model") not in ("sam", "wsi-sam") or not SHIPPED_HEAD.exists():
        return {"default_model": "sam", "reason": "the shipped head is missing"}
    return decision


def default_model() -> str:
    """"wsi-sam" when the shipped head measured at least as good as SAM held out, else "sam"."""
    return str(default_decision()["default_model"])
