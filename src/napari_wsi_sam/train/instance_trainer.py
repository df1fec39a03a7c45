"""Train the instance decoder on annotated images, on the frozen encoder's cached features.

Views are crop pairs spread over each image (not centred on objects: the decoder must learn
background and crowded places alike), with flips, colour jitter and a small jitter of the HR
pixel size, each encoded once (`feature_cache`). The targets come from every training object
in the view (`instance_targets`); the loss counts only pixels on the image, near annotated
objects (a sparse annotation says nothing about the places nobody drew in) and outside
held-out areas. Loss: BCE + Dice on foreground, squared error on the two distance maps,
with the objects of classes in `class_weights` (and a ring around them) weighed up.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import torch
import torch.nn.functional as F

from ..errors import TrainingCancelled, TrainingError
from ..model.device import resolve_device
from ..model.encoder import EncoderOutput
from ..model.instance_checkpoint import InstanceDecoderSettings, save_instance_decoder
from ..model.instance_decoder import OUTPUT_SIZE, InstanceDecoder, InstanceDecoderConfig
from ..model.predictor import WsiSamPredictor
from ..model.sam import SamParts, load_sam
from ..polygons import Areal
from ..progress import Progress, no_progress
from ..scale import CROP_SIZE
from ..slide import Slide, open_slide
from .datasets import AnnotatedImage
from .feature_cache import image_identity
from .instance_targets import view_targets
from .sampler import ColorJitter, CropView, render_view
from .trainer import feature_cache_for

logger = logging.getLogger(__name__)


MAX_CLASS_WEIGHT = 100.0
"""The largest loss weight a class may get (beyond it one class drowns the rest)."""


@dataclass(frozen=True)
class InstanceTrainConfig:
    """Everything that decides an instance-decoder run (saved with the decoder).

    views_per_image: crop pairs per image (at least enough to cover it twice);
    annotated_margin_um: the loss counts within this distance of a training object;
    scale_jitter: the HR pixel size of a view varies by up to this share;
    class_weights: (class name, weight) pairs: those objects weigh this much in the loss
    (for example stroma's thin "connective" nuclei, rare beside tumour nuclei);
    rotations: half the views transposed, so that with the flips every quarter-turn
    rotation is seen (nuclei and fibres lie in any direction).
    """

    hr_mpp: float = 0.25
    lr_factor: float = 2.0
    decoder: InstanceDecoderConfig = field(default_factory=InstanceDecoderConfig)
    views_per_image: int = 48
    epochs: int = 20
    batch: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    color: float = 0.1
    scale_jitter: float = 0.1
    annotated_margin_um: float = 24.0
    window: int = 32
    """Side of the square of the 64x64 feature grid each step decodes (64: the whole crop;
    32: a quarter of it, at a quarter of the cost, so four times the steps in the same time)."""
    precision: str = "auto"
    class_weights: tuple[tuple[str, float], ...] = ()
    rotations: bool = True

    def check(self) -> None:
        if self.hr_mpp <= 0 or self.lr_factor < 1:
            raise TrainingError(f"the HR µm/px must be > 0 and the LR factor >= 1, got "
                                f"{self.hr_mpp} and {self.lr_factor}")
        if not 8 <= self.window <= 64:
            raise TrainingError(f"the training window must be 8..64 feature cells, got "
                                f"{self.window}")
        for name, weight in self.class_weights:
            if not 0 < weight <= MAX_CLASS_WEIGHT:
                raise TrainingError(f"the loss weight of class {name!r} must lie in "
                                    f"(0, {MAX_CLASS_WEIGHT:g}], got {weight}")
        for name in ("views_per_image", "epochs", "batch"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name.replace('_', ' ')} must be >= 1, got "
                                    f"{getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["decoder"] = self.decoder.to_dict()
        out["class_weights"] = [list(pair) for pair in self.class_weights]
        return out


@dataclass
class InstanceView:
    """One encoded view: its features, HR pixels at the output size and targets."""

    view: CropView
    hr: EncoderOutput
    lr: EncoderOutput
    pixels: np.ndarray
    """(512, 512, 3) uint8: the HR crop area-averaged to the output grid."""
    maps: np.ndarray
    weight: np.ndarray
    """(512, 512) float32 loss weights, 0 where a pixel does not count."""


@dataclass(frozen=True)
class InstanceStep:
    """After one optimiser step (for progress bars)."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    seconds_left: float


# ------------------------------------------------------------------------- data
def plan_area_views(slides: Sequence[Slide], areas: Sequence[Areal], config: InstanceTrainConfig
                    ) -> list[CropView]:
    """`views_per_image` views per image, centred at seeded random places of its annotated
    area, with flips (and transposes, with `rotations`), colour jitter and pixel-size
    jitter. The transposes are drawn apart, so the other fields are the same either way."""
    views = []
    for index, (slide, area) in enumerate(zip(slides, areas, strict=True)):
        if area.is_empty:
            continue
        rng = np.random.default_rng([config.seed, 7, index])
        turns = np.random.default_rng([config.seed, 11, index])
        x0, y0, x1, y1 = area.bounds
        width, height = slide.dimensions
        made = 0
        tries = 0
        while made < config.views_per_image and tries < 100 * config.views_per_image:
            tries += 1
            cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
            if not shapely.contains_xy(area, cx, cy):
                continue
            cx, cy = min(max(cx, 0.0), width - 0.5), min(max(cy, 0.0), height - 0.5)
            flip_x, flip_y = (bool(v) for v in rng.integers(0, 2, 2))
            mpp = config.hr_mpp * (1 + rng.uniform(-config.scale_jitter, config.scale_jitter))
            transpose = bool(turns.integers(0, 2)) and config.rotations
            views.append(CropView(index, (round(float(cx), 3), round(float(cy), 3)),
                                  round(float(mpp), 6), config.lr_factor, flip_x, flip_y,
                                  ColorJitter.draw(rng, config.color), transpose))
            made += 1
    return views


def annotated_area(image: AnnotatedImage, *, margin_px: float) -> Areal:
    """Where the image's objects tell background from object: within `margin_px` of one."""
    geometries = [o.geometry for o in image.objects]
    if not geometries:
        return shapely.Polygon()
    return shapely.union_all([g.buffer(margin_px) for g in geometries])


def prepare_instance_views(data: Sequence[AnnotatedImage], config: InstanceTrainConfig, *,
                           encoder: WsiSamPredictor, feature_dir: Path | None = None,
                           ignore: Sequence[Sequence[Areal]] | None = None,
                           progress: Progress = no_progress) -> list[InstanceView]:
    """Plan, render, encode (cached) and draw the targets of every view."""
    cache = feature_cache_for(encoder, feature_dir)
    slides = [open_slide(image.image, mpp=image.mpp) for image in data]
    try:
        areas = []
        for image, slide in zip(data, slides, strict=True):
            mpp = slide.require_mpp()[0]
            areas.append(annotated_area(image, margin_px=config.annotated_margin_um / mpp))
        views = plan_area_views(slides, areas, config)
        identities = [image_identity(image.image) for image in data]
        prepared = []
        for view in progress(iter(views), len(views), "encoding crops"):
            slide = slides[view.image_index]
            hr_image, lr_image = render_view(view, slide)
            hr, lr = cache.get_or_compute(
                view.token(identities[view.image_index]),
                functools.partial(_rendered, hr_image, lr_image),
                functools.partial(encoder.encode, base="mobile_sam"))
            outside = [shapely.difference(_view_field(view, slide), areas[view.image_index])]
            extra = list(ignore[view.image_index]) if ignore is not None else []
            targets = view_targets(view, slide, data[view.image_index].objects,
                                   size=OUTPUT_SIZE, ignore=outside + extra,
                                   class_weights=dict(config.class_weights))
            if not targets.valid.any():
                continue
            prepared.append(InstanceView(view, hr, lr, _pool(hr_image), targets.maps,
                                         targets.weight))
    finally:
        for slide in slides:
            slide.close()
    if not prepared:
        raise TrainingError("no crop holds annotated objects; check that annotations are "
                            "level-0 pixels of their images")
    return prepared


def _rendered(hr: np.ndarray, lr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return hr, lr


def _view_field(view: CropView, slide: Slide) -> Areal:
    from .sampler import view_maps

    hr_map, _ = view_maps(view, slide)
    corners = hr_map.to_slide(np.array([[0, 0], [CROP_SIZE, CROP_SIZE]]))
    return shapely.box(*corners.ravel())


def _pool(image: np.ndarray) -> np.ndarray:
    """(1024, 1024, 3) uint8 -> (512, 512, 3) uint8, 2x2 means."""
    f = CROP_SIZE // OUTPUT_SIZE
    pooled = image.reshape(OUTPUT_SIZE, f, OUTPUT_SIZE, f, 3).mean(axis=(1, 3))
    return np.round(pooled).astype(np.uint8)


# ------------------------------------------------------------------------- loss
def instance_loss(logits: torch.Tensor, maps: torch.Tensor, weight: torch.Tensor
                  ) -> torch.Tensor:
    """BCE + Dice on foreground and squared error on the distances, each pixel counted by
    its `weight` (0: left out; a bool mask works too)."""
    weight = weight.float()
    count = weight.sum().clamp_min(1.0)
    fg_logit, fg = logits[:, 0], maps[:, 0]
    bce = (F.binary_cross_entropy_with_logits(fg_logit, fg, reduction="none")
           * weight).sum() / count
    prob = torch.sigmoid(fg_logit) * weight
    dice = 1 - (2 * (prob * fg).sum() + 1) / (prob.sum() + (fg * weight).sum() + 1)
    distances = torch.sigmoid(logits[:, 1:])
    squared = ((distances - maps[:, 1:]) ** 2 * weight[:, None]).sum() / (2 * count)
    return bce + dice + 4.0 * squared


# ------------------------------------------------------------------------- training
def train_instance_decoder(
    data: Sequence[AnnotatedImage],
    config: InstanceTrainConfig,
    out: Path,
    *,
    device: str = "auto",
    feature_dir: Path | None = None,
    ignore: Sequence[Sequence[Areal]] | None = None,
    parts: SamParts | None = None,
    progress: Progress = no_progress,
    on_step: Callable[[InstanceStep], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    settings: InstanceDecoderSettings | None = None,
    start_from: InstanceDecoder | None = None,
) -> tuple[Path, InstanceDecoder]:
    """Train a decoder per `config` and save it to ``out/instance_decoder.pt`` (with
    `settings`, its config and training data filled in). `ignore`: per image, level-0 areas
    left out of the loss (held-out blocks). `start_from`: a trained decoder of the same
    config whose weights this run continues from (fine-tuning), instead of fresh ones."""
    config.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    mobile = parts if parts is not None else load_sam("mobile_sam", device="cpu")
    encoder = WsiSamPredictor(model="sam", device=torch_device, precision=config.precision,  # type: ignore[arg-type]
                              cache_bytes=0, parts={"mobile_sam": mobile})
    prepared = prepare_instance_views(data, config, encoder=encoder, feature_dir=feature_dir,
                                      ignore=ignore, progress=progress)
    torch.manual_seed(config.seed)
    decoder = InstanceDecoder(config.decoder)
    if start_from is not None:
        if start_from.config != config.decoder:
            raise TrainingError(f"the decoder to continue from has widths "
                                f"{start_from.config.widths} and context "
                                f"{start_from.config.context}; train with the same, or from "
                                f"scratch")
        decoder.load_state_dict(start_from.state_dict())
    decoder = decoder.to(torch_device).train()
    optimiser = torch.optim.AdamW(decoder.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    windows = (64 // config.window) ** 2  # an epoch sees every view's whole crop once
    per_epoch = windows * ((len(prepared) + config.batch - 1) // config.batch)
    total = per_epoch * config.epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr,
                                                   total_steps=total, pct_start=0.1)
    started = time.perf_counter()
    step = 0
    for epoch in range(config.epochs):
        rng = np.random.default_rng([config.seed, 2000 + epoch])
        order = np.concatenate([rng.permutation(len(prepared)) for _ in range(windows)])
        for start in range(0, len(order), config.batch):
            if should_stop is not None and should_stop():
                raise TrainingCancelled("training was cancelled; nothing was installed")
            views = [prepared[i] for i in order[start:start + config.batch]]
            row, col = (int(v) for v in rng.integers(0, 64 - config.window + 1, 2))
            loss = _step(decoder, optimiser, views, torch_device,
                         (row, col, config.window))
            schedule.step()
            step += 1
            if on_step is not None:
                mean = (time.perf_counter() - started) / step
                on_step(InstanceStep(epoch + 1, config.epochs, step, total, loss,
                                     mean * (total - step)))
        logger.info("instance decoder epoch %d/%d: loss %.4f", epoch + 1, config.epochs, loss)
    decoder.eval()
    described = _describe(config, data, len(prepared))
    settings = settings or InstanceDecoderSettings()
    settings = settings.with_training(config=config.decoder, hr_mpp=config.hr_mpp,
                                      lr_factor=config.lr_factor, training_data=described,
                                      train_config=config.to_dict())
    path = save_instance_decoder(decoder, out / "instance_decoder.pt", settings=settings)
    return path, decoder


def _step(decoder: InstanceDecoder, optimiser: torch.optim.Optimizer,
          views: list[InstanceView], device: torch.device,
          window: tuple[int, int, int]) -> float:
    hr = EncoderOutput(torch.cat([v.hr.embedding for v in views]).to(device),
                       torch.cat([v.hr.early for v in views]).to(device))
    lr = EncoderOutput(torch.cat([v.lr.embedding for v in views]).to(device),
                       torch.cat([v.lr.early for v in views]).to(device))
    pixels = torch.from_numpy(np.stack([v.pixels for v in views])).to(device)
    maps = torch.from_numpy(np.stack([v.maps for v in views])).to(device)
    weight = torch.from_numpy(np.stack([v.weight for v in views])).to(device)
    row, col, side = window
    scale = OUTPUT_SIZE // 64
    cut = (slice(row * scale, (row + side) * scale), slice(col * scale, (col + side) * scale))
    logits = decoder(hr, lr if decoder.config.context else None, pixels, window=window)
    loss = instance_loss(logits, maps[:, :, cut[0], cut[1]], weight[:, cut[0], cut[1]])
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return float(loss.detach())


def _describe(config: InstanceTrainConfig, data: Sequence[AnnotatedImage], views: int) -> str:
    names = ", ".join(sorted({image.dataset for image in data}))
    objects = sum(len(image.objects) for image in data)
    extras = "".join([", rotations" if config.rotations else ""]
                     + [f", {name} x{weight:g}" for name, weight in config.class_weights])
    return (f"{objects} objects of {names}; {views} views at {config.hr_mpp} µm/px, "
            f"{config.epochs} epochs{extras}")
