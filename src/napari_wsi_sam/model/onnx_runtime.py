"""ONNX Runtime for the predictor: export a module once, keep it on disk, run it in a session.

Graphs are traced from our own modules (`onnx_decoder`, `onnx_encoder`) with torch's
TorchScript exporter, written under ``cache_home()/onnx`` named by a digest of their weights
and code version (so a new head or a new release never reads a stale graph), and run by
ONNX Runtime's CPU provider with every graph optimisation, as many threads as torch uses,
threads spinning only while a run lasts.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn

from ..paths import cache_home

Runtime = Literal["auto", "onnx", "torch"]
"""Where the predictor runs the encoder and the prompt side: `WsiSamPredictor` says when."""
RUNTIMES: tuple[str, ...] = get_args(Runtime)
ONNX_BUILD_ERRORS: tuple[type[Exception], ...] = (ImportError, OSError, RuntimeError,
                                                 ValueError, TypeError)
"""What a failed export or session start raises; the predictor then runs on torch."""
GRAPH_VERSION = "15"
"""Part of every graph's digest: bump it when a graph's code changes."""
OPSET = 17

def graph_folder() -> Path:
    """Where exported graphs are kept."""
    return cache_home() / "onnx"


def onnx_runtime_available() -> bool:
    """Whether ONNX Runtime and the `onnx` package (torch's exporter writes with it) import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def graph_digest(module: nn.Module, *tags: str) -> str:
    """A digest of a graph's weights, its code version and `tags` (names the cached file)."""
    digest = hashlib.sha256(f"{GRAPH_VERSION}|{torch.__version__}|{'|'.join(tags)}".encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


_EXPORT_LOCK = threading.Lock()
"""torch's exporter keeps process-wide state (two exports at once fail): one at a time."""


def export_graph(module: nn.Module, example: tuple[Tensor, ...], input_names: Sequence[str],
                 output_names: Sequence[str], dynamic: dict[str, dict[int, str]], path: Path
                 ) -> Path:
    """Trace `module` on `example` into `path` (written atomically); returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    with _EXPORT_LOCK, warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes about Python scalars: the shapes are fixed
        torch.onnx.export(module.eval(), example, str(partial), dynamo=False,
                          opset_version=OPSET, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dynamic,
                          do_constant_folding=True)
    os.replace(partial, path)
    return path


def new_session(path: Path) -> Any:
    """An ONNX Runtime CPU session on `path` with every graph optimisation, using as many
    threads as torch does (the two runtimes never run at once).

    ONNX Runtime's memory arena stays on, though it holds on to its largest run's memory for
    good (~0.5 GB for the encoder, ~0.5 GB for a decoder at 4 prompts a call). Every graph
    keeps it: without it each run maps and faults in its buffers anew, measured 13% slower
    for an encoder pass and 50-140% slower for a warm prompt on this VM. Sessions are shared
    (`shared_session`), so the memory is paid once per graph, not once per predictor.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # threads spin during a run (waking sleeping ones between ~600 small ops costs ~15 ms)
    # and stop at its end: the encoder (torch) and napari share these cores
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


_SESSIONS: dict[Path, Any] = {}
_SESSIONS_LOCK = threading.Lock()


def shared_session(path: Path) -> Any:
    """The process's one session on the graph file `path` (a file holds one set of weights,
    and a session runs calls from several threads safely): predictors share it, so a second
    predictor of the same model costs no second copy of its weights and arena."""
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(path)
        if session is None:
            session = _SESSIONS[path] = new_session(path)
        return session


def run_session(session: Any, names: Sequence[str], tensors: Sequence[Tensor]
                ) -> list[Tensor]:
    """Run `session` on float32 CPU arrays of `tensors`; outputs as torch tensors."""
    feeds = {name: np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())
             for name, t in zip(names, tensors, strict=True)}
    return [torch.from_numpy(out) for out in session.run(None, feeds)]
