"""Encoder outputs of training crops, computed once and kept on disk in half precision.

SAM's encoder is frozen, so a crop's final embedding (256x64x64) and early feature (160x64x64)
never change: training on a CPU then runs only the decoder and the new parts. One file per
crop (about 3.3 MB), named by a hash of the image's identity (path, size, modification time),
the view (centre, pixel size, flips, colour jitter), the encoder weights and the encoder's
precision, so it is reused across runs and never served for a different crop.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..model.encoder import EncoderOutput
from ..paths import cache_home

logger = logging.getLogger(__name__)

Encode = Callable[[np.ndarray], EncoderOutput]


def default_cache_dir() -> Path:
    return cache_home() / "features"


def image_identity(path: Path) -> str:
    """Path, size and modification time: changes whenever the image file does."""
    path = Path(path).resolve()
    stat = path.stat()
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def weights_identity(path: Path) -> str:
    """Name, size and modification time of the encoder weights file."""
    stat = Path(path).stat()
    return f"{Path(path).name}|{stat.st_size}|{stat.st_mtime_ns}"


class FeatureCache:
    """Disk cache of (HR, LR) `EncoderOutput` pairs keyed by view token.

    model_id: what makes the features: the weights' identity and the encoder precision.
    """

    def __init__(self, root: Path | None, *, model_id: str) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.model_id = model_id
        self.hits = 0
        self.misses = 0

    def path(self, view_token: str) -> Path:
        digest = hashlib.sha256(f"{self.model_id}|{view_token}".encode()).hexdigest()[:32]
        return self.root / digest[:2] / f"{digest}.pt"

    def get(self, view_token: str) -> tuple[EncoderOutput, EncoderOutput] | None:
        path = self.path(view_token)
        if not path.exists():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            pair = (EncoderOutput(data["hr_embedding"], data["hr_early"]),
                    EncoderOutput(data["lr_embedding"], data["lr_early"]))
        except Exception as error:  # a damaged file is recomputed, never trusted
            logger.warning("feature cache file %s is unreadable (%s); recomputing", path, error)
            return None
        self.hits += 1
        return pair

    def put(self, view_token: str, hr: EncoderOutput, lr: EncoderOutput
            ) -> tuple[EncoderOutput, EncoderOutput]:
        """Store a pair in half precision; returns it as stored, so a fresh pair and a cached
        one feed training identically."""
        path = self.path(view_token)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"hr_embedding": hr.embedding, "hr_early": hr.early,
                "lr_embedding": lr.embedding, "lr_early": lr.early}
        data = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in data.items()}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(data, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return (EncoderOutput(data["hr_embedding"], data["hr_early"]),
                EncoderOutput(data["lr_embedding"], data["lr_early"]))

    def get_or_compute(self, view_token: str, render: Callable[[], tuple[np.ndarray, np.ndarray]],
                       encode: Encode) -> tuple[EncoderOutput, EncoderOutput]:
        """Cached features of a view, else render its crops, encode both and store them."""
        cached = self.get(view_token)
        if cached is not None:
            return cached
        self.misses += 1
        hr_image, lr_image = render()
        return self.put(view_token, encode(hr_image), encode(lr_image))
