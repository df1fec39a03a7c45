"""MobileSAM's TinyViT encoder on ONNX Runtime: the cold prompt's two passes on a CPU.

In float32 ONNX Runtime runs a 1024² pass in ~0.45 s on 2 cores, where eager PyTorch takes
~1.05 s in float32 and ~0.57 s under bfloat16 autocast (docs/performance.md); and its
outputs are float32's (within ~3e-6), so no mask moves, where bfloat16's moved IoU 0.992 on
average. The graph has one fixed input shape, (1,3,S,S), as the encoder does.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .encoder import EncoderOutput, TinyViTSamEncoder
from .onnx_runtime import (
    export_graph,
    graph_digest,
    graph_folder,
    run_session,
    shared_session,
)

ENCODER_INPUTS = ("image",)


class EncoderGraph(nn.Module):
    """The encoder with plain tensor outputs: (1,3,S,S) normalised -> embedding, early."""

    def __init__(self, encoder: TinyViTSamEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        out = self.encoder(image)
        return out.embedding, out.early


class OnnxEncoders:
    """One ONNX Runtime session per encoder (exported once per set of weights)."""

    def __init__(self, *, folder: Path | None = None) -> None:
        self.folder = folder or graph_folder()
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()

    def session(self, encoder: TinyViTSamEncoder) -> Any:
        with self._lock:
            key = id(encoder)
            if key not in self._sessions:
                graph = EncoderGraph(encoder).eval()
                size = encoder.img_size
                path = self.folder / f"encoder-{size}-{graph_digest(graph, 'encoder')}.onnx"
                if not path.exists():
                    export_graph(graph, (torch.zeros(1, 3, size, size),), ENCODER_INPUTS,
                                 ("embedding", "early"), {}, path)
                self._sessions[key] = shared_session(path)
            return self._sessions[key]

    def encode(self, encoder: TinyViTSamEncoder, image: Tensor) -> EncoderOutput:
        """(1,3,S,S) preprocessed crop -> float32 `EncoderOutput` on the CPU."""
        embedding, early = run_session(self.session(encoder), ENCODER_INPUTS, (image,))
        return EncoderOutput(embedding, early)
