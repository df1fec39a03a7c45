"""Encoder outputs of a slide's crop-grid nodes, kept on disk so a first prompt on precomputed
tissue costs only the decoder.

`napari-wsi-sam precompute` fills it; every predictor the session, `segment` and the cohort
workers build reads it (`attach`). Layout, in the slide's store folder:

    embeddings.zarr/<weights>/<hr µm/px>/<cx>_<cy>/{hr,lr}_{embedding,early}

``<weights>`` is the SAM variant and the sha256 of its weights file, so outputs of other
weights are never served; a node is one zarr group of float16 arrays (zstd), written under a
temporary name and renamed into place, so a reader sees it whole or not at all and workers
may write different nodes of one slide at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from ..model.encoder import EncoderOutput
from ..store.files import default_folder

logger = logging.getLogger(__name__)

FOLDER = "embeddings.zarr"
FIELDS = EncoderOutput._fields


def node_name(center: tuple[float, float]) -> str:
    return f"{center[0]:.3f}_{center[1]:.3f}"


class SlideEmbeddings:
    """The stored encoder outputs of one slide, for one weights file."""

    def __init__(self, slide_path: Path, weights: str, *, root: Path | None = None) -> None:
        self.slide_path = Path(slide_path)
        self.root = Path(root) if root is not None else default_folder(self.slide_path) / FOLDER
        self.weights = weights

    def node_path(self, center: tuple[float, float], hr_mpp: float) -> Path:
        return self.root / self.weights / f"{hr_mpp:g}" / node_name(center)

    def has(self, center: tuple[float, float], hr_mpp: float) -> bool:
        return (self.node_path(center, hr_mpp) / "zarr.json").is_file()

    def load(self, center: tuple[float, float], hr_mpp: float, which: str
             ) -> EncoderOutput | None:
        """The HR or LR ("hr", "lr") outputs at a node, as float16 tensors; None if absent
        or unreadable (then the encoder runs, as without a store)."""
        path = self.node_path(center, hr_mpp)
        if not (path / "zarr.json").is_file():
            return None
        try:
            arrays = [np.asarray(zarr.open_array(path / f"{which}_{name}", mode="r")[:])
                      for name in FIELDS]
        except (KeyError, OSError, ValueError, zarr.errors.BaseZarrError) as error:
            logger.warning("embedding store node %s is unreadable (%s); encoding instead",
                           path, error)
            return None
        return EncoderOutput(*(torch.from_numpy(a) for a in arrays))

    def save(self, center: tuple[float, float], hr_mpp: float,
             outputs: dict[str, EncoderOutput]) -> int:
        """Write a node's outputs ({"hr": ..., "lr": ...}) whole; returns its bytes on disk."""
        final = self.node_path(center, hr_mpp)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            group = zarr.open_group(tmp, mode="w")
            for which, output in outputs.items():
                for name, tensor in zip(FIELDS, output, strict=True):
                    data = tensor.detach().to("cpu", torch.float16).numpy()
                    group.create_array(f"{which}_{name}", data=data, chunks=data.shape)
            if final.exists():  # another worker finished this node first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return _bytes(final)


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class StoredEmbeddings:
    """What a predictor asks for (`WsiSamPredictor.embeddings`): the stored outputs under a
    pipeline embedding key, ``(slide path, (cx, cy), hr_mpp)`` for HR or that plus "lr"."""

    def __init__(self) -> None:
        self._slides: dict[tuple[str, str], SlideEmbeddings] = {}
        self.loads = 0

    def load(self, base: str, key: Hashable, weights: str) -> EncoderOutput | None:
        parsed = _parse(key)
        if parsed is None:
            return None
        path, center, hr_mpp, which = parsed
        slide = self._slides.get((path, weights))
        if slide is None:
            slide = self._slides[(path, weights)] = SlideEmbeddings(Path(path), weights)
        out = slide.load(center, hr_mpp, which)
        self.loads += out is not None
        return out


def _parse(key: Any) -> tuple[str, tuple[float, float], float, str] | None:
    which = "hr"
    if isinstance(key, tuple) and len(key) == 2 and key[1] == "lr":
        key, which = key[0], "lr"
    if not (isinstance(key, tuple) and len(key) == 3 and isinstance(key[0], str)):
        return None
    path, center, hr_mpp = key
    return path, (float(center[0]), float(center[1])), float(hr_mpp), which


def attach(predictor: Any) -> Any:
    """Let `predictor` read precomputed embeddings of any slide it is asked about."""
    if getattr(predictor, "embeddings", None) is None:
        predictor.embeddings = StoredEmbeddings()
    return predictor
