"""Train WSI-SAM's head (or SAM's mask decoder, the SAM* baseline) on annotated images.

SAM stays frozen. Crop pairs are planned once (`sampler.plan_views`) and encoded once
(`feature_cache`), so each step runs only the decoder and the trainable parts. An epoch visits
every view in a seeded random order and trains on up to ``objects_per_view`` of its objects,
``batch`` at a time. Every draw (views, objects, prompt kinds and noise) comes from seeds, so a
resumed run continues exactly where it stopped.

Outputs in ``out``: ``epoch_NNN.pt`` and ``last.pt`` (state to resume), ``head.pt`` (a WSI-SAM
head, `head_checkpoint` format) or ``sam_decoder.pt`` (SAM*), ``log.csv`` (one row per step)
and ``loss.png``.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..errors import TrainingCancelled, TrainingError, one_line
from ..model.decoder_checkpoint import save_sam_decoder
from ..model.device import encoder_dtype, resolve_device
from ..model.encoder import EncoderOutput
from ..model.head_checkpoint import HeadSettings, save_head
from ..model.predictor import WsiSamPredictor
from ..model.sam import SamParts, load_sam
from ..model.wsi_sam import WsiSam, WsiSamHead, sam_forward
from ..progress import Progress, no_progress
from ..slide import open_slide
from .batches import Batch, draw_kinds, make_batches
from .datasets import AnnotatedImage
from .feature_cache import FeatureCache, image_identity, weights_identity
from .losses import mask_loss, wsi_sam_loss
from .prompt_noise import PROMPT_KINDS
from .sampler import CropView, ViewObject, plan_views, render_view, view_objects

logger = logging.getLogger(__name__)

Mode = Literal["wsi-sam", "sam-decoder"]
MODES: tuple[Mode, ...] = ("wsi-sam", "sam-decoder")
LOG_FIELDS = ["epoch", "step", "kind_mix", "prompts", "loss", "loss_hr", "loss_lr", "seconds"]


TRAIN_HR_MPP = 0.25
"""HR µm/px a run trains at unless told otherwise: 40x, for nuclei."""


@dataclass
class TrainConfig:
    """Everything that decides a training run (saved in its checkpoints).

    mode: "wsi-sam" trains the new head; "sam-decoder" fine-tunes SAM's mask decoder (SAM*).
    head: the head to make (`HeadSettings`): its `HeadConfig` (aggregation), λ of
    L = λ·L_high + (1 - λ)·L_low, and the crop pixel sizes (HR, and LR = HR x lr_factor),
    which SAM* crops use too. views_per_image: crop pairs planned per image;
    objects_per_view: objects per view per epoch; batch: objects per optimiser step (all
    from one view).
    """

    mode: Mode = "wsi-sam"
    head: HeadSettings = field(default_factory=lambda: HeadSettings(hr_mpp=TRAIN_HR_MPP))
    views_per_image: int = 24
    objects_per_view: int = 12
    batch: int = 4
    epochs: int = 6
    lr: float = 1e-3
    weight_decay: float = 0.01
    max_points: int = 10
    prompt_kinds: tuple[str, ...] = PROMPT_KINDS
    min_area: int = 16
    seed: int = 0
    precision: str = "auto"
    data: str = ""

    def check(self) -> None:
        if self.mode not in MODES:
            raise TrainingError(f"unknown mode {self.mode!r}; use {' or '.join(MODES)}")
        if not 0.0 <= self.head.lam <= 1.0:
            raise TrainingError(f"lambda must lie in [0, 1], got {self.head.lam}")
        for name in ("views_per_image", "objects_per_view", "batch", "epochs", "max_points"):
            if int(getattr(self, name)) < 1:
                raise TrainingError(f"{name} must be >= 1, got {getattr(self, name)}")
        unknown = set(self.prompt_kinds) - set(PROMPT_KINDS)
        if unknown or not self.prompt_kinds:
            raise TrainingError(f"prompt kinds must be among {PROMPT_KINDS}, got "
                                f"{self.prompt_kinds}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A config from `asdict`, or from a run of format 1 (head settings at the top)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        head = values.pop("head", None)
        if not isinstance(head, dict):
            head = {k: data[k] for k in ("lam", "aggregation", "hr_mpp", "lr_factor")
                    if k in data}
        values["head"] = HeadSettings.from_dict(head)
        if "prompt_kinds" in values:
            values["prompt_kinds"] = tuple(values["prompt_kinds"])
        return cls(**values)

    def comparable(self) -> dict[str, Any]:
        """What must match for a run to resume: everything but epochs, data and the head's
        description (which training fills in)."""
        out = asdict(self)
        out.pop("epochs"), out.pop("data")
        head = self.head
        out["head"] = {"config": asdict(head.config), "lam": head.lam, "hr_mpp": head.hr_mpp,
                       "lr_factor": head.lr_factor, "base_model": head.base_model}
        return out


@dataclass
class PreparedView:
    """A view with its objects and cached encoder outputs (half precision, CPU)."""

    view: CropView
    objects: list[ViewObject]
    hr: EncoderOutput
    lr: EncoderOutput


@dataclass
class TrainResult:
    out: Path
    model_path: Path
    log_path: Path
    plot_path: Path
    epochs_run: int
    steps: int
    seconds: float
    views: int
    objects: int
    cache_misses: int
    history: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------------- preparing data
def prepare_views(data: list[AnnotatedImage], config: TrainConfig, *, encoder: WsiSamPredictor,
                  cache: FeatureCache, progress: Progress = no_progress) -> list[PreparedView]:
    """Plan the views, rasterise their objects and fetch (or compute) their encoder outputs."""
    slides = [open_slide(image.image, mpp=image.mpp) for image in data]
    try:
        objects = [list(image.objects) for image in data]
        views = plan_views(objects, slides, views_per_image=config.views_per_image,
                           hr_mpp=config.head.hr_mpp, lr_factor=config.head.lr_factor,
                           seed=config.seed)
        identities = [image_identity(image.image) for image in data]
        prepared = []
        for view in progress(iter(views), len(views), "encoding crops"):
            slide = slides[view.image_index]
            inside = view_objects(view, slide, objects[view.image_index],
                                  min_area=config.min_area)
            if not inside:
                continue
            hr, lr = cache.get_or_compute(
                view.token(identities[view.image_index]),
                functools.partial(render_view, view, slide),
                functools.partial(encoder.encode, base="mobile_sam"))
            prepared.append(PreparedView(view, inside, hr, lr))
    finally:
        for slide in slides:
            slide.close()
    if not prepared:
        raise TrainingError("no crop holds a whole annotated object; check that annotations "
                            "are level-0 pixels of their images and the HR µm/px suits them")
    return prepared


def feature_cache_for(encoder: WsiSamPredictor, root: Path | None) -> FeatureCache:
    """The feature cache for `encoder`'s MobileSAM weights and encoder precision."""
    parts = encoder.parts("mobile_sam")
    weights = weights_identity(parts.checkpoint) if parts.checkpoint else "unknown"
    dtype = encoder_dtype(encoder.device, encoder.precision)
    return FeatureCache(root, model_id=f"{weights}|{dtype}")


# ------------------------------------------------------------------------- the model
class Trainable:
    """The module that trains in a mode, and how it turns a batch into a loss."""

    def __init__(self, config: TrainConfig, parts: SamParts, device: torch.device) -> None:
        self.config = config
        self.device = device
        if config.mode == "wsi-sam":
            head = WsiSamHead(config.head.config)
            self.model: torch.nn.Module = WsiSam(prompt_encoder=parts.prompt_encoder,
                                                 mask_decoder=parts.mask_decoder, head=head)
            self.trained: torch.nn.Module = head
        else:
            self.prompt_encoder = parts.prompt_encoder
            decoder = copy.deepcopy(parts.mask_decoder).requires_grad_(True)
            self.model = self.trained = decoder
        self.model.to(device)
        self.trained.train()

    def start_from(self, path: Path) -> None:
        """Begin from a trained head's weights (continue learning with new objects)."""
        from ..model.head_checkpoint import load_head

        if self.config.mode != "wsi-sam":
            raise TrainingError("only a WSI-SAM head can continue from a head file")
        loaded = load_head(path)
        if loaded.settings.config != self.config.head.config:
            raise TrainingError(f"{path} is a {loaded.settings.config.aggregation} head; this run "
                                f"trains a {self.config.head.config.aggregation} one")
        self.trained.load_state_dict(loaded.head.state_dict())

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.trained.parameters() if p.requires_grad]

    def loss(self, batch: Batch, hr: EncoderOutput, lr: EncoderOutput
             ) -> tuple[torch.Tensor, float, float]:
        if self.config.mode == "wsi-sam":
            lam = self.config.head.lam
            out = self.model(hr, lr, batch.hr, batch.lr, with_lr_mask=lam < 1.0)
            parts = wsi_sam_loss(out.hr_logits, batch.hr_target, out.lr_logits,
                                 batch.lr_target, lam=lam)
            return parts.total, float(parts.high), float(parts.low)
        logits, _ = sam_forward(self.prompt_encoder, self.model,  # type: ignore[arg-type]
                                hr.embedding, batch.hr)
        loss = mask_loss(logits, batch.hr_target)
        return loss, float(loss.detach()), 0.0

    def save(self, path: Path, settings: dict[str, Any]) -> Path:
        if self.config.mode == "wsi-sam":
            return save_head(self.trained, path, settings=self.config.head,  # type: ignore[arg-type]
                             training_data=settings.get("training_data", ""),
                             classes=settings.get("classes", ()))
        return save_sam_decoder(self.trained, path, settings=settings)

    @property
    def model_file(self) -> str:
        return "head.pt" if self.config.mode == "wsi-sam" else "sam_decoder.pt"


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast where the hardware has it (float32 master weights), else nothing."""
    dtype = encoder_dtype(device, precision)
    if dtype is None or dtype == torch.float16:  # float16 would need loss scaling
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            dtype = torch.bfloat16
        else:
            return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ------------------------------------------------------------------------- the loop
@dataclass(frozen=True)
class StepReport:
    """After each optimiser step: where the run is, its loss, and the time it expects to
    need for the rest (from the mean step time so far)."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    seconds_left: float


def train(data: list[AnnotatedImage], config: TrainConfig, out: Path, *,
          resume: bool = False, device: str = "auto", feature_dir: Path | None = None,
          progress: Progress = no_progress, parts: SamParts | None = None,
          max_steps: int | None = None, init_head: Path | None = None,
          on_step: Callable[[StepReport], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train per `config` on `data`, writing checkpoints, the log and the plot into `out`.

    resume: continue from ``out/last.pt`` (same config required). max_steps: stop after this
    many optimiser steps in total (benchmarks and tests), saving as at an epoch's end.
    init_head: start from this head's weights (a head file of the same `HeadConfig`), e.g.
    to go on learning when new objects arrive. on_step: called after every step.
    should_stop: checked before every step; when it says so, `TrainingCancelled` is raised
    (the files of epochs already finished stay in `out`; nothing is installed anywhere).
    """
    config.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    start_time = time.perf_counter()
    mobile = parts if parts is not None else load_sam("mobile_sam", device="cpu")
    encoder = WsiSamPredictor(model="sam", device=torch_device, precision=config.precision,  # type: ignore[arg-type]
                              cache_bytes=0, parts={"mobile_sam": mobile})
    cache = feature_cache_for(encoder, feature_dir)
    prepared = prepare_views(data, config, encoder=encoder, cache=cache, progress=progress)
    n_objects = len({(p.view.image_index, o.object_id) for p in prepared for o in p.objects})
    logger.info("%d views, %d distinct objects, %d encoded now", len(prepared), n_objects,
                cache.misses)

    torch.manual_seed(config.seed)
    trainable = Trainable(config, mobile, torch_device)
    if init_head is not None:
        trainable.start_from(init_head)
    optimiser = torch.optim.AdamW(trainable.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    history: list[dict[str, Any]] = []
    first_epoch = 0
    if resume and (out / "last.pt").exists():
        first_epoch, history = _load_state(out / "last.pt", config, trainable, optimiser)
        logger.info("resuming %s at epoch %d", out, first_epoch + 1)
    log_path = out / "log.csv"
    _write_log(log_path, history)
    steps = len(history)
    epoch = first_epoch
    classes = sorted({o.class_name for image in data for o in image.objects if o.class_name})
    settings = {"training_data": _describe(config, data), "config": asdict(config),
                "classes": classes}
    per_epoch = _steps_per_epoch(prepared, config)
    total = per_epoch * config.epochs if max_steps is None else min(max_steps,
                                                                    per_epoch * config.epochs)
    loop_started, loop_steps = time.perf_counter(), 0
    for epoch in range(first_epoch, config.epochs):
        rng = np.random.default_rng([config.seed, 1000 + epoch])
        order = rng.permutation(len(prepared))
        plan = []
        for index in order:
            view = prepared[index]
            take = rng.permutation(len(view.objects))[:config.objects_per_view]
            for s in range(0, len(take), config.batch):
                plan.append((view, [view.objects[i] for i in take[s:s + config.batch]]))
        stopped = False
        for view, objects in progress(iter(plan), len(plan), f"epoch {epoch + 1}"):
            if max_steps is not None and steps >= max_steps:
                stopped = True
                break
            if should_stop is not None and should_stop():
                raise TrainingCancelled("training was cancelled; the head in use stays as it "
                                        "was")
            row = _step(trainable, optimiser, view, objects, rng, config, torch_device)
            steps += 1
            loop_steps += 1
            row.update(epoch=epoch + 1, step=steps)
            history.append(row)
            _append_log(log_path, row)
            if on_step is not None:
                mean = (time.perf_counter() - loop_started) / loop_steps
                on_step(StepReport(epoch + 1, config.epochs, steps, total, row["loss"],
                                   mean * max(0, total - steps)))
        _save_state(out, epoch + 1, config, trainable, optimiser, history)
        trainable.save(out / trainable.model_file, settings)
        plot_losses(history, out / "loss.png")
        if stopped:
            break
    return TrainResult(out=out, model_path=out / trainable.model_file, log_path=log_path,
                       plot_path=out / "loss.png", epochs_run=epoch + 1 - first_epoch,
                       steps=steps, seconds=time.perf_counter() - start_time,
                       views=len(prepared), objects=n_objects, cache_misses=cache.misses,
                       history=history)


def _steps_per_epoch(prepared: list[PreparedView], config: TrainConfig) -> int:
    """Optimiser steps of one epoch: each view's objects (up to objects_per_view), batched."""
    return sum(-(-min(len(p.objects), config.objects_per_view) // config.batch)
               for p in prepared)


def _step(trainable: Trainable, optimiser: torch.optim.Optimizer, view: PreparedView,
          objects: list[ViewObject], rng: np.random.Generator, config: TrainConfig,
          device: torch.device) -> dict[str, Any]:
    started = time.perf_counter()
    kinds = draw_kinds(len(objects), rng, tuple(config.prompt_kinds))  # type: ignore[arg-type]
    batches = make_batches(objects, kinds, rng, lr_factor=config.head.lr_factor,
                           max_points=config.max_points, device=device)
    hr = EncoderOutput(*(t.to(device, torch.float32) for t in view.hr))
    lr = EncoderOutput(*(t.to(device, torch.float32) for t in view.lr))
    optimiser.zero_grad(set_to_none=True)
    total = high = low = 0.0
    for batch in batches:
        weight = len(batch.hr) / len(objects)
        with _autocast(device, config.precision):
            loss, loss_hr, loss_lr = trainable.loss(batch, hr, lr)
        (loss * weight).backward()
        total += float(loss.detach()) * weight
        high += loss_hr * weight
        low += loss_lr * weight
    optimiser.step()
    return {"kind_mix": "+".join(f"{b.kind}:{len(b.hr)}" for b in batches),
            "prompts": len(objects), "loss": round(total, 6), "loss_hr": round(high, 6),
            "loss_lr": round(low, 6), "seconds": round(time.perf_counter() - started, 4)}


def _describe(config: TrainConfig, data: list[AnnotatedImage]) -> str:
    names = sorted({image.dataset for image in data})
    head = config.head
    return (f"{config.data or ', '.join(names)}; {config.mode}, λ={head.lam}, "
            f"{head.config.aggregation}, SAM's mask {head.config.sam_mask}, "
            f"HR {head.hr_mpp} µm/px x{head.lr_factor}, "
            f"{config.views_per_image} views/image, {config.objects_per_view} objects/view, "
            f"batch {config.batch}, {config.epochs} epochs, seed {config.seed}")


# ------------------------------------------------------------------------- state and logs
def _save_state(out: Path, epoch: int, config: TrainConfig, trainable: Trainable,
                optimiser: torch.optim.Optimizer, history: list[dict[str, Any]]) -> None:
    state = {"format": "napari-wsi-sam-train-state", "epoch": epoch, "config": asdict(config),
             "trained": trainable.trained.state_dict(), "optimiser": optimiser.state_dict(),
             "history": history}
    path = out / f"epoch_{epoch:03d}.pt"
    torch.save(state, path)
    tmp = out / "last.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(out / "last.pt")


def _load_state(path: Path, config: TrainConfig, trainable: Trainable,
                optimiser: torch.optim.Optimizer) -> tuple[int, list[dict[str, Any]]]:
    try:  # tensors and plain settings only: a crafted file cannot run code here
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged pickle can raise anything
        reason = one_line(error)
        raise TrainingError(f"cannot resume from {path} ({reason}); delete it to start over"
                            ) from None
    if not isinstance(state, dict) or state.get("format") != "napari-wsi-sam-train-state":
        raise TrainingError(f"{path} is not a napari-wsi-sam training state")
    saved, now = TrainConfig.from_dict(state["config"]).comparable(), config.comparable()
    differs = [name for name in now if saved.get(name) != now[name]]
    if differs:
        raise TrainingError(f"cannot resume {path.parent}: its run used other settings "
                            f"({', '.join(differs)}); use a new --out or the same settings")
    trainable.trained.load_state_dict(state["trained"])
    optimiser.load_state_dict(state["optimiser"])
    return int(state["epoch"]), list(state.get("history", []))


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows({k: row.get(k) for k in LOG_FIELDS} for row in rows)


def _append_log(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=LOG_FIELDS).writerow({k: row.get(k) for k in LOG_FIELDS})


def plot_losses(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss per step (faint) and its per-epoch mean, HR and LR terms too; PNG at `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if history:
        steps = np.array([row["step"] for row in history])
        for key, colour, label in (("loss", "C0", "total"), ("loss_hr", "C1", "HR (L_high)"),
                                   ("loss_lr", "C2", "LR (L_low)")):
            values = np.array([row[key] for row in history], dtype=float)
            if key == "loss_lr" and not values.any():
                continue
            ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
            epochs = np.array([row["epoch"] for row in history])
            ends = [steps[epochs == e].max() for e in np.unique(epochs)]
            means = [values[epochs == e].mean() for e in np.unique(epochs)]
            ax.plot(ends, means, "o-", color=colour, label=f"{label}, epoch mean")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("dice + BCE")
    ax.set_title("training loss")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
