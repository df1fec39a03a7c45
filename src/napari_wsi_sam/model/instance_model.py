"""An instance decoder ready to run: its weights, settings, device and the watershed after it.

The encoder outputs come from a `WsiSamPredictor`'s `encode` (the same cache, precision and
stored embeddings as prompts use), so a region segmented this way and then refined with
prompts pays the encoder once per crop.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from .encoder import EncoderOutput
from .instance_checkpoint import InstanceDecoderSettings, load_instance_decoder
from .instance_decoder import InstanceDecoder, maps_from_logits
from .instance_watershed import WatershedSettings, instances_from_maps


class InstanceModel:
    """`maps` and `labels` of one HR crop (with its LR context) from encoder outputs."""

    def __init__(self, decoder: InstanceDecoder, settings: InstanceDecoderSettings, *,
                 device: torch.device | str = "cpu", source: str = "") -> None:
        self.device = torch.device(device)
        self.decoder = decoder.eval().requires_grad_(False).to(self.device)
        self.settings = settings
        self.source = source
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, *, device: torch.device | str = "cpu") -> InstanceModel:
        loaded = load_instance_decoder(Path(path), device=device)
        return cls(loaded.decoder, loaded.settings, device=device, source=str(path))

    @property
    def name(self) -> str:
        return self.settings.name or Path(self.source).stem

    @property
    def uses_context(self) -> bool:
        return self.decoder.config.context

    def maps(self, hr: EncoderOutput, lr: EncoderOutput | None, image: np.ndarray
             ) -> np.ndarray:
        """(3, 512, 512) float32 foreground, centre and boundary distance of one HR crop
        ((1024, 1024, 3) uint8 `image`)."""
        with self._lock, torch.inference_mode():
            pixels = torch.from_numpy(np.ascontiguousarray(image))[None].to(self.device)
            hr_batch = EncoderOutput(*(t.to(self.device)[None] if t.ndim == 3
                                       else t.to(self.device) for t in hr))
            lr_batch = None
            if self.uses_context and lr is not None:
                lr_batch = EncoderOutput(*(t.to(self.device)[None] if t.ndim == 3
                                           else t.to(self.device) for t in lr))
            logits = self.decoder(hr_batch, lr_batch, pixels)
            return maps_from_logits(logits)[0].float().cpu().numpy()

    def labels(self, maps: np.ndarray, watershed: WatershedSettings | None = None
               ) -> np.ndarray:
        """(512, 512) int32 instance labels of `maps` (the decoder's tuned thresholds unless
        `watershed` is given)."""
        return instances_from_maps(maps, watershed or self.settings.watershed)
