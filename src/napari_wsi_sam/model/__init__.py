"""Model code: the frozen SAM parts (TinyViT encoder, prompt encoder, mask decoder) and weights.

Pure ``torch.nn`` modules; no napari, tifffile or zarr here.
"""

from .encoder import (
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
from .sam import SamParts, build_sam_parts, load_sam
from .weights import (
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
