"""Keep triton out of napari processes that have no CUDA GPU (they would segfault).

torchvision and torch._dynamo import triton when it is installed (CUDA builds of torch ship
it), and triton's own LLVM clashes with the LLVM inside Mesa's software OpenGL: a napari window
on llvmpipe (Xvfb, remote desktops, VMs) segfaults the moment triton loads after the canvas
exists. Triton only serves GPUs, so nothing is lost on a CPU-only machine (torch.compile there
uses its C++ backend). Only modules that run napari call this, before the model is imported;
plain library and CLI use is left alone.
"""

from __future__ import annotations

import sys


def keep_triton_out_without_a_gpu() -> None:
    """Make ``import triton`` fail in this process unless a CUDA GPU is there."""
    if "triton" in sys.modules:
        return
    import torch

    if not torch.cuda.is_available():
        sys.modules["triton"] = None  # type: ignore[assignment]
