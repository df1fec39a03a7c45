"""The request bodies of samapi's protocol, as QuPath's SAM extension sends them.

Field names, types and defaults follow samapi's pydantic models (``SAMBody``,
``SAMAutoMaskBody``, ``SAMWeightsBody``) and the extension's request builders
(``SAMPromptParameters``, ``SAMAutoMaskParameters``, ``SAMWeights``): ``b64img`` is a
base64-encoded PNG of the viewer region; ``bbox`` (x0, y0, x1, y1) and ``point_coords`` (x, y)
are integer pixels of that image, origin top left; ``point_labels`` 1 = foreground,
0 = background. Two optional fields are ours: ``slide`` (a slide path, or a name under
``--slides``) and ``region`` (the sent image's bounds in level-0 pixels of that slide, x0 y0
x1 y1, QuPath's RegionRequest), with which the server reads WSI-SAM's HR and LR crops from the
slide itself. Extra fields are ignored, as samapi does.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

Box = tuple[int, int, int, int]
Region = tuple[float, float, float, float]


class SlideContext(BaseModel):
    """Where the sent image lies in a slide the server can open (both or neither)."""

    slide: str | None = Field(default=None, max_length=4096)
    region: Region | None = None


class PromptBody(SlideContext):
    """POST /sam/: one object from a box and/or points on the sent image."""

    type: str | None = "vit_h"
    bbox: Box | None = None
    point_coords: tuple[tuple[int, int], ...] | None = None
    point_labels: tuple[int, ...] | None = None
    b64img: str
    b64mask: str | None = None
    multimask_output: bool = False
    checkpoint_url: str | None = Field(default=None, max_length=4096)


class AutoMaskBody(SlideContext):
    """POST /sam/automask/: every object on the sent image (segment-anything's settings)."""

    type: str | None = "vit_h"
    b64img: str
    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    output_type: str = "Single Mask"
    include_image_edge: bool = False
    checkpoint_url: str | None = Field(default=None, max_length=4096)


class WeightsBody(BaseModel):
    """POST /sam/weights/: register weights (for us: install a WSI-SAM head file)."""

    type: str = Field(max_length=64)
    name: str = Field(max_length=200)
    url: str = Field(max_length=4096)
