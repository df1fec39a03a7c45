"""Model code: the frozen SAM parts (TinyViT encoder, prompt encoder, mask decoder) and weights.

Pure ``torch.nn`` modules; no napari, tifffile or zarr here.
"""

import sys

import torch


def _keep_triton_out_without_a_gpu() -> None:
    """Without a CUDA GPU, make ``import triton`` fail instead of loading it.

    torchvision and torch._dynamo import triton when it is installed (CUDA builds of torch
    ship it), and triton's own LLVM clashes with the LLVM inside Mesa's software OpenGL: a
    napari window on llvmpipe (Xvfb, remote desktops, VMs) segfaults the moment triton loads
    after the canvas exists. Triton only serves GPUs, so nothing is lost on a CPU-only
    machine; torch.compile there uses its C++ backend.
    """
    if not torch.cuda.is_available() and "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]


_keep_triton_out_without_a_gpu()

from .encoder import (  # noqa: E402
    ENCODER_CONFIGS,
    PIXEL_MEAN,
    PIXEL_STD,
    EncoderOutput,
    TinyViTSamEncoder,
    build_encoder,
    checkpoint_filter_fn,
    optimise_for_inference,
    preprocess,
)
from .sam import SamParts, build_sam_parts, load_sam  # noqa: E402
from .weights import (  # noqa: E402
    WEIGHTS_ENV,
    WEIGHTS_FILES,
    WeightsStatus,
    find_weights,
    install_weights,
    weights_status,
)

__all__ = [
    "ENCODER_CONFIGS",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "WEIGHTS_ENV",
    "WEIGHTS_FILES",
    "EncoderOutput",
    "SamParts",
    "TinyViTSamEncoder",
    "WeightsStatus",
    "build_encoder",
    "build_sam_parts",
    "checkpoint_filter_fn",
    "find_weights",
    "install_weights",
    "load_sam",
    "optimise_for_inference",
    "preprocess",
    "weights_status",
]
