"""WsiSamPredictor on real H&E (histolytics hgsc_nest) with the real MobileSAM weights."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from napari_wsi_sam.errors import DeviceError, PromptError, UsageError
from napari_wsi_sam.model import load_sam
from napari_wsi_sam.model import predictor as predictor_module
from napari_wsi_sam.model.device import resolve_device, run_chunked
from napari_wsi_sam.model.embedding_cache import EmbeddingCache
from napari_wsi_sam.model.predictor import (
    WsiSamPredictor,
    concentric_hr_to_lr,
    map_masks,
)
from napari_wsi_sam.model.registry import shipped_heads
from napari_wsi_sam.scale import CROP_SIZE as CROP

pytestmark = pytest.mark.slow  # the real model on CPU

ORIGINS = [(0, 0), (476, 0), (0, 476), (476, 476)]  # (x, y) of 4 crops covering 1500x1500
PER_CROP = 15  # nuclei per crop, evenly spread over the labels
MIN_AREA = 400  # pixels (the quality test, tests/test_quality.py, works at 40x instead)


def hr_crop(image: np.ndarray, x0: int, y0: int) -> np.ndarray:
    return np.ascontiguousarray(image[y0:y0 + CROP, x0:x0 + CROP])


def lr_crop(image: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Concentric 2x-coarser context of the HR crop at (x0, y0), zeros beyond the image."""
    cx, cy = x0 + CROP // 2, y0 + CROP // 2
    big = np.zeros((2 * CROP, 2 * CROP, 3), np.uint8)
    h, w = image.shape[:2]
    sx, sy = cx - CROP, cy - CROP
    ys, xs = slice(max(sy, 0), min(sy + 2 * CROP, h)), slice(max(sx, 0), min(sx + 2 * CROP, w))
    big[ys.start - sy:ys.stop - sy, xs.start - sx:xs.stop - sx] = image[ys, xs]
    return big.reshape(CROP, 2, CROP, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)


@pytest.fixture(scope="module")
def nest(asset_path):
    image = np.asarray(Image.open(asset_path("hgsc_nest.jpg")).convert("RGB"))
    labels = np.load(asset_path("hgsc_nest_inst_mask.npz"))["nuc_raster"]
    return image, labels


@pytest.fixture(scope="module")
def mobile_parts(asset_path):
    return load_sam("mobile_sam", checkpoint=asset_path("mobile_sam.pt"))


@pytest.fixture(scope="module")
def predictor(mobile_parts):
    return WsiSamPredictor(device="cpu", parts={"mobile_sam": mobile_parts})


@pytest.fixture(scope="module")
def crop_pair(nest):
    image, _ = nest
    return hr_crop(image, 0, 0), lr_crop(image, 0, 0)


def test_concentric_map_is_the_reference_box_mapping():
    box = np.array([[100.0, 200.0, 300.0, 500.0]])
    mapped = concentric_hr_to_lr(box.reshape(-1, 2, 2)).reshape(-1, 4)
    np.testing.assert_allclose(mapped, box / 2 + 256)


def test_mask_prompt_maps_into_the_lr_crop():
    mask = np.full((1, 256, 256), -10.0, np.float32)
    mask[0, 100:140, 60:120] = 10.0  # HR-crop pixels 240..560 x 400..560
    lr = map_masks(mask, concentric_hr_to_lr)
    assert lr.shape == (1, 256, 256)
    # HR 256-grid (r, c) -> LR (r/2 + 64, c/2 + 64): the blob lands at rows 114..134, cols 94..124
    assert (lr[0, 116:132, 96:122] > 0).all()
    assert (lr[0, :60] < 0).all() and (lr[0, 200:] < 0).all()  # outside the HR field: MASK_FILL


def test_cache_hit_runs_the_decoder_only(predictor, crop_pair):
    hr, lr = crop_pair
    boxes = np.array([[330.0, 80.0, 370.0, 120.0]])
    calls = predictor.encoder_calls
    first = predictor.predict(hr, lr, boxes=boxes, cache_key=("nest", 0, 0))
    assert predictor.encoder_calls == calls + 2  # HR and LR
    start = time.perf_counter()
    second = predictor.predict(hr, lr, boxes=boxes + 5, cache_key=("nest", 0, 0))
    warm = time.perf_counter() - start
    assert predictor.encoder_calls == calls + 2  # both embeddings came from the cache
    assert first.masks.shape == second.masks.shape == (1, CROP, CROP)
    assert first.masks.dtype == bool and first.logits.dtype == np.float32
    assert first.scores.shape == (1,) and first.low_res_logits.shape == (1, 256, 256)
    logging.getLogger(__name__).info("warm WSI-SAM prompt: %.3f s", warm)
    # "sam" on the same crop reuses the HR embedding (same encoder)
    predictor.predict(hr, boxes=boxes, model="sam", cache_key=("nest", 0, 0))
    assert predictor.encoder_calls == calls + 2


def nucleus_box(labels: np.ndarray, label: int) -> np.ndarray:
    """(4,) XYXY tight box of one nucleus in image pixels (pixel i covers [i, i + 1))."""
    rows, cols = ndimage.find_objects((labels == label).astype(np.int32))[0]
    return np.array([cols.start, rows.start, cols.stop, rows.stop], np.float32)


def test_points_masks_and_multimask(predictor, crop_pair, nest):
    hr, lr = crop_pair
    labels = nest[1][:CROP, :CROP]
    label = int(np.bincount(labels.ravel())[1:].argmax()) + 1  # the largest nucleus
    box = nucleus_box(labels, label)
    first = predictor.predict(hr, lr, boxes=box[None], cache_key=("nest", 0, 0))
    ys, xs = np.nonzero(labels == label)
    inside = np.array([[[xs[len(xs) // 2], ys[len(ys) // 2]]]], np.float32)
    out = predictor.predict(hr, lr, points=inside, point_labels=np.array([[1]]),
                            mask_prompts=first.low_res_logits, multimask=True,
                            cache_key=("nest", 0, 0))
    truth = labels == label
    assert out.masks.shape == (1, CROP, CROP)
    assert (out.masks[0] & truth).sum() / (out.masks[0] | truth).sum() > 0.5


def test_cache_is_bounded_in_bytes():
    cache = EmbeddingCache(max_bytes=3 * 4000)
    for key in range(5):
        cache.put(key, torch.zeros(1000))  # 4000 bytes each
    assert len(cache) == 3 and cache.bytes == 12000 and 0 not in cache and 4 in cache
    assert cache.get(2) is not None  # 2 is now the most recently used
    cache.put(5, torch.zeros(1000))
    assert 3 not in cache and 2 in cache
    cache.put("big", torch.zeros(10_000))  # larger than the bound: not kept
    assert "big" not in cache and cache.bytes <= cache.max_bytes


def test_oom_retries_with_smaller_batches_then_falls_back():
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    state = {"device": "cuda", "calls": []}

    def run(start: int, stop: int) -> list[int]:
        state["calls"].append((state["device"], stop - start))
        if state["device"] == "cuda" and stop - start > 2:
            raise oom
        return list(range(start, stop))

    out = run_chunked(run, 10, batch=8, fallback=lambda: False)
    assert [i for chunk in out for i in chunk] == list(range(10))
    assert [size for _, size in state["calls"]][:3] == [8, 4, 2]

    state["calls"].clear()

    def always_oom_on_gpu(start: int, stop: int) -> list[int]:
        state["calls"].append((state["device"], stop - start))
        if state["device"] == "cuda":
            raise oom
        return list(range(start, stop))

    def to_cpu() -> bool:
        state["device"] = "cpu"
        return True

    out = run_chunked(always_oom_on_gpu, 10, batch=4, fallback=to_cpu)
    assert [i for chunk in out for i in chunk] == list(range(10))
    assert state["calls"][:3] == [("cuda", 4), ("cuda", 2), ("cuda", 1)]
    assert all(device == "cpu" for device, _ in state["calls"][3:])
    with pytest.raises(torch.OutOfMemoryError):  # nowhere left to go: the error surfaces
        state["device"] = "cuda"
        run_chunked(always_oom_on_gpu, 3, batch=2, fallback=lambda: False)


def test_predictor_survives_oom_in_the_decoder(predictor, crop_pair, monkeypatch, caplog):
    """Out of memory is a torch device's event: the eager path halves its batches."""
    hr, _ = crop_pair
    monkeypatch.setattr(predictor, "runtime", "torch")
    boxes = np.array([[330.0, 80.0, 370.0, 120.0], [600, 600, 640, 650], [10, 10, 60, 60]])
    expected = predictor.predict(hr, boxes=boxes, model="sam", cache_key=("nest", 0, 0))
    real = predictor_module.sam_forward

    def flaky(*args, **kwargs):
        if len(args[3]) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "sam_forward", flaky)
    with caplog.at_level(logging.WARNING):
        out = predictor.predict(hr, boxes=boxes, model="sam", cache_key=("nest", 0, 0))
    assert "out of memory" in caplog.text
    np.testing.assert_allclose(out.logits, expected.logits, atol=1e-4)


def test_bad_inputs_raise_clear_errors(predictor, crop_pair):
    hr, lr = crop_pair
    with pytest.raises(PromptError, match="no HR prompt"):
        predictor.predict(hr, lr)
    with pytest.raises(PromptError, match="needs lr_image"):
        predictor.predict(hr, boxes=np.array([[0, 0, 10, 10]]))
    with pytest.raises(PromptError, match="point_labels"):
        predictor.predict(hr, lr, points=np.zeros((1, 1, 2)))
    with pytest.raises(PromptError, match="NaN"):
        predictor.predict(hr, lr, boxes=np.array([[0, 0, np.nan, 10]]))
    with pytest.raises(UsageError, match="unknown model"):
        predictor.predict(hr, lr, boxes=np.array([[0, 0, 10, 10]]), model="hq-sam")
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(hr[:512], lr, boxes=np.array([[0, 0, 10, 10]]))
    assert resolve_device("auto").type in {"cuda", "mps", "cpu"}
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA"):
            resolve_device("cuda")


def _prompts_per_crop(labels: np.ndarray) -> dict[tuple[int, int], list[int]]:
    """Nuclei (area >= MIN_AREA) assigned to the first crop holding them wholly."""
    slices = ndimage.find_objects(labels)
    areas = np.bincount(labels.ravel())
    chosen: dict[tuple[int, int], list[int]] = {o: [] for o in ORIGINS}
    for label, sl in enumerate(slices, start=1):
        if sl is None or areas[label] < MIN_AREA:
            continue
        for x0, y0 in ORIGINS:
            if (sl[0].start >= y0 + 1 and sl[0].stop <= y0 + CROP - 1
                    and sl[1].start >= x0 + 1 and sl[1].stop <= x0 + CROP - 1):
                chosen[(x0, y0)].append(label)
                break
    return {o: v[:: max(1, len(v) // PER_CROP)][:PER_CROP] for o, v in chosen.items()}


def test_precision_choice_and_bfloat16_masks_match_float32(mobile_parts, crop_pair, nest):
    from napari_wsi_sam.model.device import encoder_dtype

    cpu = torch.device("cpu")
    assert encoder_dtype(cpu, "float32") is None
    assert encoder_dtype(cpu, "bfloat16") is torch.bfloat16
    assert encoder_dtype(cpu, "auto") in (None, torch.bfloat16)
    with pytest.raises(DeviceError, match="precision"):
        WsiSamPredictor(device="cpu", precision="int4", parts={"mobile_sam": mobile_parts})
    hr, lr = crop_pair
    _, labels = nest
    chosen = _prompts_per_crop(labels)[(0, 0)][:6]
    boxes = np.stack([nucleus_box(labels, label) for label in chosen])
    masks = {}
    for precision in ("float32", "bfloat16"):
        predictor = WsiSamPredictor(device="cpu", precision=precision,
                                    parts={"mobile_sam": mobile_parts})
        masks[precision] = predictor.predict(hr, lr, boxes=boxes).masks
    a, b = masks["float32"], masks["bfloat16"]
    agreement = (a & b).sum((1, 2)) / np.maximum((a | b).sum((1, 2)), 1)
    assert agreement.min() > 0.9, agreement


def _crop_boxes(nest):
    _, labels = nest
    chosen = _prompts_per_crop(labels)[(0, 0)]
    return np.stack([nucleus_box(labels, label) for label in chosen])


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a & b).sum((1, 2)) / np.maximum((a | b).sum((1, 2)), 1)


@pytest.fixture(scope="module")
def shipped(mobile_parts):
    """The shipped head, float32 everywhere (the encoder too, for a clean comparison)."""
    return WsiSamPredictor(device="cpu", precision="float32", head="hgsc_nuclei",
                           parts={"mobile_sam": mobile_parts})


def test_decoder_options_default_to_todays_masks(shipped, crop_pair, nest):
    """exact_sam=True, float32, separate passes, runtime "auto" by default; stacked passes
    (a torch lever) change nothing on torch."""
    assert shipped.exact_sam and shipped.decoder_precision == "float32"
    assert not shipped.stack_passes and shipped.runtime == "auto"
    with pytest.raises(DeviceError, match="decoder precision"):
        WsiSamPredictor(device="cpu", decoder_precision="float16")  # type: ignore[arg-type]
    hr, lr = crop_pair
    boxes = _crop_boxes(nest)[:4]
    shipped.runtime = "torch"
    try:
        base = shipped.predict(hr, lr, boxes=boxes, cache_key="options")
        shipped.stack_passes = True
        stacked = shipped.predict(hr, lr, boxes=boxes, cache_key="options")
    finally:
        shipped.stack_passes, shipped.runtime = False, "auto"
    np.testing.assert_allclose(stacked.logits, base.logits, rtol=0, atol=1e-4)


def test_joint_sam_mask_and_bfloat16_agreement_with_the_shipped_head(shipped, crop_pair, nest):
    """exact_sam=False (no third pass) and the bfloat16 decoder against today's masks, on 15
    real nuclei: docs/performance.md gives the measured agreement over 60. The shipped head
    learnt its residual on SAM's own mask, so without the third pass its masks move a lot
    (mean IoU 0.71 over 60 nuclei); bfloat16 stays close (0.98)."""
    hr, lr = crop_pair
    boxes = _crop_boxes(nest)
    base = shipped.predict(hr, lr, boxes=boxes, cache_key="options").masks
    try:
        shipped.exact_sam = False
        joint = shipped.predict(hr, lr, boxes=boxes, cache_key="options").masks
        shipped.exact_sam, shipped.decoder_precision = True, "bfloat16"
        bf16 = shipped.predict(hr, lr, boxes=boxes, cache_key="options").masks
    finally:
        shipped.exact_sam, shipped.decoder_precision = True, "float32"
    joint_iou, bf16_iou = _iou(joint, base), _iou(bf16, base)
    print(f"\nexact_sam=False mean IoU {joint_iou.mean():.3f}, bfloat16 {bf16_iou.mean():.3f}")
    assert 0.4 < joint_iou.mean() < 0.99, joint_iou  # measurably different, not unrelated
    assert bf16_iou.mean() > 0.95 and bf16_iou.min() > 0.8, bf16_iou


@pytest.fixture(scope="module", params=[head.name for head in shipped_heads()])
def each_shipped(request, mobile_parts):
    """Every shipped head (three-pass "separate" and two-pass "joint"), float32."""
    return WsiSamPredictor(device="cpu", precision="float32", head=request.param,
                           parts={"mobile_sam": mobile_parts})


def test_onnx_runtime_keeps_todays_masks_over_60_real_nuclei(each_shipped, nest, request):
    """The default CPU runtime (ONNX Runtime) against eager PyTorch, each shipped head and
    SAM, on 60 real nuclei over 4 crops: the issue's bar is mask IoU >= 0.99. SAM's masks do
    not depend on the head, so SAM is compared once, beside the first head."""
    image, labels = nest
    shipped = each_shipped
    assert shipped.runtime == "auto" and shipped.uses_onnx()
    first = request.node.callspec.params["each_shipped"] == shipped_heads()[0].name
    ious: dict[str, list[np.ndarray]] = {m: [] for m in (["wsi-sam", "sam"] if first
                                                         else ["wsi-sam"])}
    for (x0, y0), chosen in _prompts_per_crop(labels).items():
        hr, lr = hr_crop(image, x0, y0), lr_crop(image, x0, y0)
        boxes = np.stack([nucleus_box(labels, label) for label in chosen]) - [x0, y0, x0, y0]
        for model in ious:
            shipped.runtime = "onnx"
            try:
                fast = shipped.predict(hr, lr, boxes=boxes, cache_key=("rt", x0, y0),
                                       model=model)
                shipped.runtime = "torch"
                eager = shipped.predict(hr, lr, boxes=boxes, cache_key=("rt", x0, y0),
                                        model=model)
            finally:
                shipped.runtime = "auto"
            ious[model].append(_iou(fast.masks, eager.masks))
            np.testing.assert_allclose(fast.scores, eager.scores, atol=2e-3)
    for model, values in ious.items():
        iou = np.concatenate(values)
        print(f"\n{model}: ONNX against torch, {len(iou)} nuclei: mean IoU {iou.mean():.4f}, "
              f"min {iou.min():.4f}")
        assert len(iou) >= 60
        assert iou.mean() >= 0.99 and iou.min() >= 0.95, (model, iou)
