"""SAM* (the paper's fine-tuning baseline): a fine-tuned copy of SAM's mask decoder, saved alone.

Format: ``{"format": "napari-wsi-sam-sam-decoder", "settings": {...}, "state_dict": {...}}``
(about 16 MB); `load_sam_decoder` puts it into freshly loaded MobileSAM parts, which the
predictor then runs as model "sam".
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError, one_line
from .sam import SamParts, load_sam

FORMAT = "napari-wsi-sam-sam-decoder"


def save_sam_decoder(decoder: nn.Module, path: Path, *, settings: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in decoder.state_dict().items()}
    torch.save({"format": FORMAT, "settings": dict(settings), "state_dict": state}, path)
    return path


def load_sam_decoder(path: Path, *, device: str | torch.device = "cpu",
                     base: SamParts | None = None) -> SamParts:
    """MobileSAM with its mask decoder replaced by the fine-tuned one in `path`.

    base: already loaded MobileSAM parts whose encoder and prompt encoder to share (they are
    frozen and the same for SAM*); loaded from the weights when None.
    """
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"SAM* decoder {path} does not exist; train one with "
                           "`napari-wsi-sam train --mode sam-decoder`") from None
    except Exception as error:
        raise WeightsError(f"{path} is not a readable torch file ({one_line(error)})"
                           ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a SAM* decoder checkpoint (no format {FORMAT!r}); "
                           "a WSI-SAM head goes with wsi-sam:PATH")
    base = base if base is not None else load_sam("mobile_sam", device="cpu")
    parts = SamParts(base.encoder, base.prompt_encoder, copy.deepcopy(base.mask_decoder),
                     name=base.name, checkpoint=base.checkpoint)
    try:
        parts.mask_decoder.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as error:
        raise WeightsError(f"{path}: decoder weights do not fit MobileSAM: "
                           f"{one_line(error)}") from None
    parts.mask_decoder.requires_grad_(False).eval()
    return parts.to(device)
