"""`WsiSamPredictor`: prompts in HR-crop pixels -> masks, holding all per-image state.

Models (the ``model`` argument; the names and what they are live in `registry`):

- "wsi-sam" (default): MobileSAM encoder on the HR and the LR crop, WSI-SAM decoder. Without a
  trained head it uses a fresh one, whose masks equal SAM's exactly. Its score is the
  stability of its own mask logits (segment-anything's stability score), never SAM's IoU
  estimate for SAM's mask.
- "sam": MobileSAM on the HR crop alone; score: SAM's predicted IoU.
- "medsam": LiteMedSAM on the HR crop resized to 256x256 (prompts scaled to match).

Every crop is 1024x1024 RGB uint8; every coordinate is in HR-crop pixels, (x, y), boxes XYXY.
Encoder outputs are cached by the caller's key (bounded LRU, `embedding_cache`); many prompts
on one crop pair run as one decoder batch; see `device` for the out-of-memory policy.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from segment_anything.utils.amg import calculate_stability_score

from ..errors import PromptError, UsageError
from ..scale import CROP_SIZE as CROP
from ..scale import LOW_RES
from .device import (
    DecoderPrecision,
    Precision,
    decoder_dtype,
    decoder_precision,
    encoder_dtype,
    encoder_precision,
    is_out_of_memory,
    resolve_device,
    run_chunked,
)
from .embedding_cache import DEFAULT_CACHE_BYTES, EmbeddingCache
from .encoder import EncoderOutput, optimise_for_inference
from .head_checkpoint import HeadSettings
from .onnx_decoder import OnnxDecoders
from .onnx_encoder import OnnxEncoders
from .onnx_runtime import ONNX_BUILD_ERRORS, RUNTIMES, Runtime, onnx_runtime_available
from .prompt_arrays import (
    MASK_FILL,
    XYMap,
    concentric_hr_to_lr,
    lr_prompts,
    map_masks,
    prompt_arrays,
    to_prompts,
)
from .registry import BASE_MODELS
from .sam import SamParts, load_sam
from .weights import weights_id
from .wsi_sam import WsiSam, WsiSamHead, sam_forward, upsample_logits

__all__ = ["MASK_FILL", "Prediction", "WsiSamPredictor", "concentric_hr_to_lr", "map_masks"]

logger = logging.getLogger(__name__)

_HEAD_VERSIONS = itertools.count(1)
"""Unique per loaded head across predictors, so predictors can share one embedding cache."""

ModelName = Literal["wsi-sam", "sam", "medsam"]
# A crop, or a function that reads it: a crop whose embeddings are known needs no pixels.
CropImage = np.ndarray | Callable[[], np.ndarray]
PREDICTOR_MODELS = tuple(name for name, base in BASE_MODELS.items()
                         if base.checkpoint != "decoder")
"""The models a predictor runs itself (SAM* is "sam" on fine-tuned parts: `registry`)."""
RUNTIME_VARIABLE = "NAPARI_WSI_SAM_RUNTIME"
"""Environment variable naming the default `runtime` ("auto", "onnx", "torch")."""
STABILITY_OFFSET = 1.0
"""Logit offset of the stability score (segment-anything's automatic mask generator's)."""


@dataclass(frozen=True)
class Prediction:
    """Masks for N prompts on one HR crop."""

    masks: np.ndarray
    """(N,1024,1024) bool, HR-crop pixels: logits > threshold."""
    logits: np.ndarray
    """(N,1024,1024) float32 mask logits, HR-crop pixels."""
    scores: np.ndarray
    """(N,) float32 in [0, 1]: the score of each returned mask (`score_kind`)."""
    low_res_logits: np.ndarray
    """(N,256,256) float32: the logits before upsampling (a mask prompt for the next click)."""
    model: str = "wsi-sam"
    score_kind: str = "predicted_iou"
    """"predicted_iou" (SAM's IoU head) or "stability" (of these logits: `registry.SCORE_NAMES`)."""


class StoredOutputs(Protocol):
    """Encoder outputs kept somewhere else (on disk), under the caller's cache key."""

    def load(self, base: str, key: Hashable, weights: str) -> EncoderOutput | None: ...


class WsiSamPredictor:
    """Holds the models, the device, the embedding cache; `predict` turns prompts into masks.

    model: default model for `predict` ("wsi-sam", "sam", "medsam").
    head: a trained `WsiSamHead`, a head checkpoint path, a head's registry name (e.g.
        "hgsc_nuclei_joint", a head shipped in the package: `registry.find_head`), or None for a
        fresh head (= SAM).
    device: "auto" (CUDA, MPS, CPU), "cpu", "cuda", "cuda:1", "mps".
    cache_bytes: bound of the embedding cache (0 disables it).
    decoder_batch: most prompts per decoder call (halved on out-of-memory); default 4 on the
        CPU (larger batches are slower per prompt there: memory-bound), 32 on a GPU.
    channels_last, compile: encoder speed-ups (see `encoder.optimise_for_inference`).
    precision: the encoder's arithmetic: "auto" (half on a GPU; on a CPU float32 on ONNX
        Runtime where `runtime` allows it, the fastest there, else bfloat16 where the CPU has
        it in hardware, else float32), "float32", "bfloat16", "float16"
        (`device.encoder_dtype`).
    checkpoints: SAM variant name -> weights file, overriding `weights.find_weights`.
    parts: already loaded `SamParts` by variant name (tests share them between predictors).
    cache: an `EmbeddingCache` to share with other predictors of the same encoder weights
        (evaluation runs several decoders on one set of crops); default: a new one.
    exact_sam: "wsi-sam" takes SAM's mask from SAM's own decoder pass, exactly SAM's (True,
        the default), or from the HR-token pass (False: "joint", one transformer pass fewer).
        A head trained on SAM's own mask (the shipped one) loses with False: mean mask IoU
        0.71 against True over 60 real nuclei, nuclei IoU 0.64 instead of 0.79
        (docs/performance.md). A head trained "joint" is always joint.
    decoder_precision: arithmetic of the WSI-SAM decoder and fusion: "float32" (default),
        "bfloat16" (autocast: faster on a CPU with hardware bfloat16; mean mask IoU 0.98, min
        0.89, against float32 over 60 real nuclei, nuclei IoU unchanged) or "auto" (bfloat16
        on such a CPU or a GPU that has it, else float32). "sam" and "medsam" stay float32.
    stack_passes: run the HR- and LR-token passes as one transformer call of twice the
        batch (same masks; for GPUs: on a CPU, where the decoder is memory-bound, slower).
    runtime: where MobileSAM's encoder and the prompt side of "sam" and float32 "wsi-sam"
        run: "onnx" (ONNX Runtime on the CPU: the encoder in float32 at ~0.45 s a pass, faster
        than bfloat16 PyTorch and without its mask changes, `onnx_encoder`; the decoders
        ~2.5x faster than eager, masks IoU 1.0 against it over 60 real nuclei, a fresh head
        still SAM's masks exactly, `onnx_decoder`), "torch" (eager PyTorch, what training
        uses), or "auto" (the default: "onnx" on a CPU where ONNX Runtime is installed, else
        "torch"). The encoder stays on torch for an explicit bfloat16/float16 `precision`
        or `compile`. A graph that cannot be built is said once in the log; torch runs.
        None: the environment variable NAPARI_WSI_SAM_RUNTIME, else "auto" (so the CLI and
        the widget can be sent to eager PyTorch without code).
    All four are attributes too, settable between calls.
    """

    def __init__(
        self,
        *,
        model: ModelName = "wsi-sam",
        head: WsiSamHead | Path | str | None = None,
        device: str | torch.device = "auto",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        decoder_batch: int | None = None,
        channels_last: bool = True,
        compile: bool = False,
        precision: Precision = "auto",
        checkpoints: Mapping[str, Path] | None = None,
        parts: Mapping[str, SamParts] | None = None,
        cache: EmbeddingCache | None = None,
        exact_sam: bool = True,
        decoder_precision: DecoderPrecision = "float32",
        stack_passes: bool = False,
        runtime: Runtime | None = None,
    ) -> None:
        self._check_model(model)
        if decoder_batch is not None and decoder_batch < 1:
            raise ValueError(f"decoder_batch must be >= 1, got {decoder_batch}")
        self.model: ModelName = model
        self._device = resolve_device(device)
        self.decoder_batch = decoder_batch or (4 if self._device.type == "cpu" else 32)
        self.channels_last = channels_last
        self.compile = compile
        encoder_dtype(self._device, precision)  # fails early on an unknown name
        self.precision = precision
        decoder_dtype(self._device, decoder_precision)  # fails early on an unknown name
        self.decoder_precision: DecoderPrecision = decoder_precision
        self.exact_sam = exact_sam
        self.stack_passes = stack_passes
        if runtime is None:
            runtime = os.environ.get(RUNTIME_VARIABLE, "auto")  # type: ignore[assignment]
            if runtime not in RUNTIMES:
                raise UsageError(f"{RUNTIME_VARIABLE}={runtime!r} is not a runtime; set it to "
                                 f"one of {', '.join(RUNTIMES)} or unset it")
        if runtime not in RUNTIMES:
            raise UsageError(f"unknown runtime {runtime!r}; use one of "
                             f"{', '.join(RUNTIMES)}")
        if runtime == "onnx" and self._device.type != "cpu":
            raise UsageError(f"runtime 'onnx' runs on the CPU, not on "
                             f"{self._device}; use 'auto' or 'torch'")
        self.runtime: Runtime = runtime
        self._onnx = OnnxDecoders()
        self._onnx_encoders = OnnxEncoders()
        self._onnx_broken: str | None = None
        self.cache = cache if cache is not None else EmbeddingCache(cache_bytes)
        self.embeddings: StoredOutputs | None = None
        """Encoder outputs kept on disk (`pipeline.embedding_store`), read on a cache miss."""
        self.encoder_calls = 0
        self._checkpoints = dict(checkpoints or {})
        self._parts: dict[str, SamParts] = {}
        for name, loaded in (parts or {}).items():
            self._parts[name] = self._prepare(loaded)
        self._head, self._head_settings = self._as_head(head)
        self._wsi: WsiSam | None = None
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- state
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def head(self) -> WsiSamHead:
        return self._head

    @property
    def head_settings(self) -> HeadSettings | None:
        """The settings of the head file in use (its HR µm/px, LR factor, what it learnt), or
        None for a head given as a module or a fresh one."""
        return self._head_settings

    def set_head(self, head: WsiSamHead | Path | str | None) -> None:
        """Use another WSI-SAM head (None: a fresh one); drops its cached image features."""
        with self._lock:
            self._head, self._head_settings = self._as_head(head)
            self._wsi = None
            self._onnx.forget_head()
            self.cache.discard(lambda key: key[0] == "fusion")

    def _as_head(self, head: WsiSamHead | Path | str | None
                 ) -> tuple[WsiSamHead, HeadSettings | None]:
        """A head from a module, a head file, a registry name (`registry.find_head`), or
        None (a fresh head, whose masks equal SAM's)."""
        settings = None
        if isinstance(head, (str, Path)):
            from .head_checkpoint import load_head
            from .registry import find_head

            loaded = load_head(find_head(head).path)
            head, settings = loaded.head, loaded.settings
        self._head_version = next(_HEAD_VERSIONS)
        head = head if head is not None else WsiSamHead()
        return head.eval().requires_grad_(False).to(self._device), settings

    def parts(self, base: str) -> SamParts:
        """The loaded SAM variant `base` ("mobile_sam", "lite_medsam"), loading it once."""
        if base not in self._parts:
            loaded = load_sam(base, checkpoint=self._checkpoints.get(base), device=self._device)
            self._parts[base] = self._prepare(loaded, compile=self.compile)
        return self._parts[base]

    def _prepare(self, parts: SamParts, *, compile: bool = False) -> SamParts:
        optimise_for_inference(parts.encoder, channels_last=self.channels_last, compile=compile)
        return parts.to(self._device)

    def wsi_sam(self) -> WsiSam:
        """The WSI-SAM module (frozen MobileSAM decoder + the current head)."""
        if self._wsi is None:
            mobile = self.parts("mobile_sam")
            self._wsi = WsiSam(prompt_encoder=mobile.prompt_encoder,
                               mask_decoder=mobile.mask_decoder, head=self._head).eval()
        return self._wsi

    def move_to_cpu(self) -> bool:
        """Move models and cached tensors to the CPU (float32); False if already there."""
        if self._device.type == "cpu":
            return False
        self._device = torch.device("cpu")
        for parts in self._parts.values():
            parts.to(self._device)
        self._head.to(self._device)
        self.cache.map_values(lambda value: _to(value, self._device))
        logger.warning("out of GPU memory: WSI-SAM continues on the CPU (slower)")
        return True

    # ----------------------------------------------------------------- encoder
    def encode(self, image: CropImage, *, base: str = "mobile_sam",
               key: Hashable | None = None) -> EncoderOutput:
        """Encoder outputs of one (1024,1024,3) uint8 crop, from the cache or the stored
        embeddings when `key` is there; `image` may be a function that reads the crop, called
        only when the encoder has to run."""
        cache_key = None if key is None else ("encoder", base, key)
        if cache_key is not None:
            cached = self.cache.get(cache_key)
            if cached is not None:
                return cached
            if self.embeddings is not None:
                parts = self.parts(base)
                stored = self.embeddings.load(base, key, weights_id(base, parts.checkpoint))
                if stored is not None:
                    self.cache.put(cache_key, stored)
                    return stored
        if callable(image):
            image = image()
        _check_image(image)
        try:
            out = self._run_encoder(image, base)
        except (RuntimeError, MemoryError) as error:
            if not (is_out_of_memory(error) and self.move_to_cpu()):
                raise
            out = self._run_encoder(image, base)
        if cache_key is not None:
            self.cache.put(cache_key, out)
        return out

    def _run_encoder(self, image: np.ndarray, base: str) -> EncoderOutput:
        encoder = self.parts(base).encoder
        x = encoder.preprocess(image).to(self._device)
        if self.encodes_on_onnx(base):
            try:
                out = self._onnx_encoders.encode(encoder, x)
                self.encoder_calls += 1
                return out
            except ONNX_BUILD_ERRORS as error:
                self._onnx_failed(error)
        with torch.inference_mode(), encoder_precision(self._device, self.precision):
            out = encoder(x)
        self.encoder_calls += 1
        return EncoderOutput(out.embedding, out.early)

    def _image_features(self, hr: EncoderOutput, key: Hashable | None) -> torch.Tensor:
        """The HR head's prompt-independent fused features (1,32,256,256), cached per crop."""
        cache_key = None if key is None else ("fusion", self._head_version, key)
        cached = self.cache.get(cache_key) if cache_key is not None else None
        if cached is not None:
            return cached.to(self._device)
        emb, early = (t.to(self._device, torch.float32) for t in hr)
        features = self._head.hr.fusion.image_features(emb, early)
        if cache_key is not None:
            self.cache.put(cache_key, features)
        return features

    # ----------------------------------------------------------------- runtime
    def uses_onnx(self, model: ModelName | None = None) -> bool:
        """Whether prompts of `model` (default: the predictor's) run on ONNX Runtime now:
        MobileSAM's decoder on the CPU in float32, the runtime "onnx" or "auto", ONNX Runtime
        installed, no earlier graph failure, and passes not stacked (a GPU lever)."""
        name = model or self.model
        if self.runtime == "torch" or self._onnx_broken is not None:
            return False
        if self._device.type != "cpu" or BASE_MODELS[name].weights != "mobile_sam":
            return False
        if name == "wsi-sam" and (self.stack_passes or decoder_dtype(
                self._device, self.decoder_precision) is not None):
            return False
        return onnx_runtime_available()

    def encodes_on_onnx(self, base: str = "mobile_sam") -> bool:
        """Whether `base`'s encoder runs on ONNX Runtime now (float32: `precision` "auto" or
        "float32", no `compile`; see `runtime`)."""
        if self.runtime == "torch" or self._onnx_broken is not None or self.compile:
            return False
        if self._device.type != "cpu" or base != "mobile_sam":
            return False
        return self.precision in ("auto", "float32") and onnx_runtime_available()

    def _onnx_failed(self, error: Exception) -> None:
        from ..errors import one_line

        self._onnx_broken = one_line(error)
        logger.warning("ONNX Runtime decoder unavailable (%s): prompts run on PyTorch",
                       self._onnx_broken)

    def warm_up(self, model: ModelName | None = None) -> None:
        """Load `model`'s weights (default: the predictor's), run its encoder once on a blank
        crop and its decoder (building the ONNX graph) on one prompt, so that the first real
        prompt pays only the encoder at its steady speed. Caches nothing under a crop key."""
        name = model or self.model
        self._check_model(name)
        blank = np.zeros((CROP, CROP, 3), np.uint8)
        box = prompt_arrays(np.array([[400.0, 400.0, 600.0, 600.0]]), None, None, None,
                            role="HR")
        with self._lock, torch.inference_mode():
            out = self.encode(blank, base=BASE_MODELS[name].weights)
            lr = features = None
            if name == "wsi-sam":
                lr, features = out, self._image_features(out, None)
            run = self._decoder(name, out, lr, box, box, features, multimask=False)
            run(0, 1)

    # ----------------------------------------------------------------- predict
    def predict(
        self,
        hr_image: CropImage,
        lr_image: CropImage | None = None,
        *,
        boxes: np.ndarray | None = None,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        mask_prompts: np.ndarray | None = None,
        lr_boxes: np.ndarray | None = None,
        lr_points: np.ndarray | None = None,
        lr_mask_prompts: np.ndarray | None = None,
        hr_to_lr: XYMap | None = None,
        cache_key: Hashable | None = None,
        lr_cache_key: Hashable | None = None,
        model: ModelName | None = None,
        multimask: bool = False,
        threshold: float = 0.0,
    ) -> Prediction:
        """Masks for N prompts on one HR crop (and its LR context crop for "wsi-sam").

        hr_image, lr_image: (1024,1024,3) uint8 RGB, or functions that read them (called only
            on an embedding miss); lr_image is the concentric crop at the LR pixel size
            (needed by "wsi-sam", ignored otherwise).
        Coordinates are continuous HR-crop pixels, pixel i covering [i, i + 1) as everywhere in
        the package (a tight box around pixels a..b is (a, b + 1)).
        boxes: (N,4) XYXY float, HR-crop pixels. points: (N,K,2) (x, y) float, HR-crop pixels,
            with point_labels (N,K) int (1 object, 0 background). mask_prompts: (N,256,256)
            float logits over the HR crop (e.g. an earlier `Prediction.low_res_logits`).
        lr_boxes, lr_points, lr_mask_prompts: the same prompts in LR-crop pixels; by default
            mapped from the HR ones with `hr_to_lr` ((..,2) HR px -> LR px, an affine map;
            default `concentric_hr_to_lr`).
        cache_key, lr_cache_key: keys of the HR and LR crops in the embedding cache (LR
            default: ``(cache_key, "lr")``); None: no caching.
        model: override the predictor's model for this call. multimask: let SAM choose the
            best of its three masks (useful for one point). threshold: logit threshold.
        """
        name = model or self.model
        self._check_model(name)
        hr_prompts = prompt_arrays(boxes, points, point_labels, mask_prompts, role="HR")
        n = len(hr_prompts["n"])
        with self._lock, torch.inference_mode():
            base = BASE_MODELS[name].weights
            hr = self.encode(hr_image, base=base, key=cache_key)
            lr: EncoderOutput | None = None
            lr_arrays: dict | None = None
            hr_features: torch.Tensor | None = None
            if name == "wsi-sam":
                if lr_image is None:
                    raise PromptError("model 'wsi-sam' needs lr_image, the LR context crop; "
                                      "give it, or use model='sam'")
                lr_arrays = lr_prompts(hr_prompts, lr_boxes, lr_points, lr_mask_prompts,
                                        hr_to_lr or concentric_hr_to_lr)
                lr_key = None if cache_key is None and lr_cache_key is None else (
                    lr_cache_key if lr_cache_key is not None else (cache_key, "lr"))
                lr = self.encode(lr_image, base=base, key=lr_key)
                hr_features = self._image_features(hr, cache_key)
            run = self._decoder(name, hr, lr, hr_prompts, lr_arrays, hr_features,
                                multimask=multimask)
            chunks = run_chunked(run, n, batch=self.decoder_batch, fallback=self.move_to_cpu,
                                 device=lambda: self._device)
            return _prediction(chunks, n, name=name, threshold=threshold)

    def _decoder(self, name: ModelName, hr: EncoderOutput, lr: EncoderOutput | None,
                 hr_prompts: dict, lr_arrays: dict | None, hr_features: torch.Tensor | None,
                 *, multimask: bool) -> Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]:
        """The decoder for prompts [start, stop) of one crop (pair): -> logits, IoU."""
        onnx = self.uses_onnx(name)
        if name == "wsi-sam":
            if lr is None or lr_arrays is None or hr_features is None:
                raise RuntimeError("WSI-SAM needs the LR crop's outputs and the HR features")
            wsi = self.wsi_sam()
            joint = not self.exact_sam or wsi.head.config.sam_mask == "joint"

            def run(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
                hr_part = to_prompts(hr_prompts, start, stop, scale=1.0, device=self._device)
                lr_part = to_prompts(lr_arrays, start, stop, scale=1.0, device=self._device)
                if onnx and self._onnx_broken is None:
                    try:
                        return self._onnx.wsi_sam(wsi, hr, lr, hr_features, hr_part, lr_part,
                                                  multimask=multimask, joint=joint)
                    except ONNX_BUILD_ERRORS as error:
                        self._onnx_failed(error)
                with decoder_precision(self._device, self.decoder_precision):
                    out = wsi(_to(hr, self._device), _to(lr, self._device), hr_part, lr_part,
                              multimask=multimask, with_lr_mask=False,
                              hr_image_features=hr_features.to(self._device),
                              sam_mask=None if self.exact_sam else "joint",
                              stack_passes=self.stack_passes)
                return out.hr_logits, out.iou
            return run
        parts = self.parts(BASE_MODELS[name].weights)
        scale = parts.img_size / CROP

        def run_sam(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            embedding = hr.embedding.to(self._device, torch.float32)
            prompts = to_prompts(hr_prompts, start, stop, scale=scale, device=self._device)
            if onnx and self._onnx_broken is None:
                try:
                    return self._onnx.sam(parts.prompt_encoder, parts.mask_decoder, embedding,
                                          prompts, multimask=multimask)
                except ONNX_BUILD_ERRORS as error:
                    self._onnx_failed(error)
            return sam_forward(parts.prompt_encoder, parts.mask_decoder, embedding, prompts,
                               multimask=multimask)
        return run_sam

    @staticmethod
    def _check_model(name: str) -> None:
        if name not in PREDICTOR_MODELS:
            raise UsageError(f"unknown model {name!r} for a predictor; use one of "
                             f"{', '.join(PREDICTOR_MODELS)} (SAM* through registry."
                             "build.build_predictor)")


def _to(value: EncoderOutput, device: torch.device) -> EncoderOutput:
    return EncoderOutput(*(t.to(device, torch.float32) for t in value))


def _check_image(image: np.ndarray) -> None:
    ok = isinstance(image, np.ndarray) and image.shape == (CROP, CROP, 3)
    if not ok or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"expected a ({CROP},{CROP},3) uint8 RGB crop, got {shape} {dtype}")


def _prediction(chunks: list[tuple[torch.Tensor, torch.Tensor]], n: int, *, name: str,
                threshold: float) -> Prediction:
    """Upsampled logits, masks and scores; a model whose `score_kind` is "stability" is
    scored on its own logits, not with SAM's IoU estimate (which is for SAM's mask)."""
    kind = BASE_MODELS[name].score_kind
    logits = np.empty((n, CROP, CROP), np.float32)
    low = np.empty((n, LOW_RES, LOW_RES), np.float32)
    scores = np.empty(n, np.float32)
    start = 0
    for chunk_logits, iou in chunks:
        stop = start + len(chunk_logits)
        low[start:stop] = chunk_logits[:, 0].float().cpu().numpy()
        up = upsample_logits(chunk_logits.float(), size=CROP)[:, 0]
        logits[start:stop] = up.cpu().numpy()
        if kind == "stability":
            scores[start:stop] = stability_score(up, threshold=threshold).cpu().numpy()
        else:
            scores[start:stop] = iou[:, 0].float().cpu().numpy()
        start = stop
    return Prediction(masks=logits > threshold, logits=logits, scores=scores,
                      low_res_logits=low, model=name, score_kind=kind)


def stability_score(logits: torch.Tensor, *, threshold: float = 0.0,
                    offset: float = STABILITY_OFFSET) -> torch.Tensor:
    """(N,H,W) mask logits -> (N,) IoU of the masks at ``threshold ± offset`` (0 when even
    the looser mask is empty): how little the mask moves with the threshold."""
    score = calculate_stability_score(logits, threshold, offset)
    return torch.nan_to_num(score, nan=0.0)
