"""Predictors for the registry's model choices: the one place a `ModelChoice` becomes a model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import UsageError
from .predictor import WsiSamPredictor
from .registry import ModelChoice
from .sam import SamParts


def build_predictor(choice: ModelChoice, *, device: str = "auto",
                    parts: Mapping[str, SamParts] | None = None, **kwargs: Any
                    ) -> WsiSamPredictor:
    """A `WsiSamPredictor` running `choice`. parts: loaded SAM parts to share by variant
    (MobileSAM's, loaded once); kwargs go to the predictor (cache=, precision=, ...)."""
    shared = dict(parts or {})
    if choice.model == "sam-decoder":
        from .decoder_checkpoint import load_sam_decoder

        if choice.decoder is None:  # pragma: no cover - parse_choice requires it
            raise UsageError("sam-decoder needs its checkpoint")
        shared["mobile_sam"] = load_sam_decoder(choice.decoder, base=shared.get("mobile_sam"))
        return WsiSamPredictor(model="sam", device=device, parts=shared, **kwargs)
    head = choice.head.path if choice.head is not None else None
    return WsiSamPredictor(model=choice.model, head=head, device=device,  # type: ignore[arg-type]
                           parts=shared, **kwargs)
