"""Time the encoder, a cold WSI-SAM prompt and a warm (cached) prompt, against official MobileSAM.

Run: ``python benchmarks/bench_model.py [--device cpu|cuda] [--compile] [--repeats 3]``.
Prints one table (medians, seconds). The reference column needs the test-only ``mobile_sam``
package (mobilesam-mirror); it is left empty without it. The warm-prompt rows (one per
speed lever of the WSI-SAM decoder, with the shipped head) and the reference decoder are timed
round-robin, 5x `--repeats` times each, so a shared CPU's noise falls on all of them alike.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable, Mapping

import numpy as np
import torch
from PIL import Image

from napari_wsi_sam.assets import fetch
from napari_wsi_sam.model import load_sam
from napari_wsi_sam.model.device import encoder_dtype
from napari_wsi_sam.model.encoder import optimise_for_inference
from napari_wsi_sam.model.fusion import FeatureFusion
from napari_wsi_sam.model.predictor import WsiSamPredictor
from napari_wsi_sam.model.registry import best_shipped_head, shipped_heads


def median_time(fn: Callable[[], object], repeats: int, *, sync: bool) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def round_robin(fns: Mapping[str, Callable[[], object]], repeats: int, *,
                sync: bool) -> dict[str, float]:
    """Median seconds of each function, calling them in turn so that noise is shared."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if sync:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def legacy_project(self: FeatureFusion, vectors: torch.Tensor, upscaled: torch.Tensor,
                   image_features: torch.Tensor) -> torch.Tensor:
    """`FeatureFusion.project` before the channels-last fusion (LayerNorm2d in NCHW), for the
    "as before" row."""
    n, _, height, width = upscaled.shape
    conv1, norm, act, conv2 = self.mask
    hidden = act(norm(conv1(upscaled)))
    weight = torch.einsum("nc,cikl->nikl", vectors, conv2.weight)
    grouped = hidden.reshape(1, n * hidden.shape[1], height, width)
    logits = torch.nn.functional.conv2d(grouped, weight, vectors @ conv2.bias, padding=1,
                                        groups=n).view(n, 1, height, width)
    return logits + (vectors @ image_features.flatten(2)[0]).view(n, 1, height, width)


LEVERS: dict[str, dict[str, object]] = {
    "warm WSI-SAM prompt, default (ONNX Runtime)": {},
    "warm WSI-SAM prompt, eager PyTorch (before)": {"runtime": "torch"},
    "  eager + NCHW fusion (release 0.1)": {"runtime": "torch", "legacy": True},
    "  eager + HR and LR passes stacked": {"runtime": "torch", "stack_passes": True},
    "  eager + bfloat16 decoder and fusion": {"runtime": "torch", "decoder_precision": "bfloat16"},
    "  ONNX + no third pass (exact_sam=False)": {"exact_sam": False},
    "warm SAM prompt, default (ONNX Runtime)": {"model": "sam"},
    "warm SAM prompt, eager PyTorch (before)": {"model": "sam", "runtime": "torch"},
}
"""Warm-prompt rows: predictor attributes of each lever, applied to the default predictor."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--head", default=None,
                        help="the WSI-SAM head of the WSI-SAM rows (default: the shipped head "
                             "that measured best held out, the 40x default)")
    parser.add_argument("--plot", type=str, default=None,
                        help="also draw the warm and cold prompt rows as a bar chart (PNG)")
    args = parser.parse_args()
    head = args.head or best_shipped_head(shipped_heads()).name
    logging.basicConfig(level=logging.WARNING)
    sync = args.device.startswith("cuda")
    paths = fetch(["mobile_sam.pt", "hgsc_nest.jpg"])
    image = np.asarray(Image.open(paths["hgsc_nest.jpg"]).convert("RGB"))
    hr = np.ascontiguousarray(image[:1024, :1024])
    lr = np.ascontiguousarray(image[476:, 476:][:1024, :1024])
    box = np.array([[96.0, 312.0, 150.0, 360.0]])
    rows: list[tuple[str, float, float | None]] = []

    parts = load_sam("mobile_sam", checkpoint=paths["mobile_sam.pt"], device=args.device)
    x = parts.encoder.preprocess(hr).to(args.device)
    with torch.inference_mode():
        parts.encoder(x)
        plain = median_time(lambda: parts.encoder(x), args.repeats, sync=sync)
        optimise_for_inference(parts.encoder, channels_last=True)
        parts.encoder(x)
        last = median_time(lambda: parts.encoder(x), args.repeats, sync=sync)
        compiled = None
        if args.compile:
            optimise_for_inference(parts.encoder, channels_last=True, compile=True)
            parts.encoder(x)
            compiled = median_time(lambda: parts.encoder(x), args.repeats, sync=sync)

    def prompt_times(settings: Mapping[str, str]) -> tuple[float, float, float, float]:
        """(encoder pass, cold WSI-SAM prompt, warm WSI-SAM prompt, warm SAM prompt)."""
        predictor = WsiSamPredictor(device=args.device, parts={"mobile_sam": parts},
                                    head=head, **settings)  # type: ignore[arg-type]
        counter = iter(range(10**6))

        def cold() -> object:
            return predictor.predict(hr, lr, boxes=box, cache_key=("cold", next(counter)))

        cold()  # warm-up of the decoder kernels
        encoder = median_time(lambda: predictor.encode(hr), args.repeats, sync=sync)
        cold_wsi = median_time(cold, args.repeats, sync=sync)
        predictor.predict(hr, lr, boxes=box, cache_key="warm")
        warm_wsi = median_time(lambda: predictor.predict(hr, lr, boxes=box, cache_key="warm"),
                               args.repeats * 3, sync=sync)
        warm_sam = median_time(lambda: predictor.predict(hr, boxes=box, cache_key="warm",
                                                         model="sam"), args.repeats * 3,
                               sync=sync)
        return encoder, cold_wsi, warm_wsi, warm_sam

    bf16 = encoder_dtype(torch.device(args.device), "auto") is not None
    configs = {"eager float32": {"precision": "float32", "runtime": "torch"}}
    if bf16:
        configs["eager bfloat16 (before)"] = {"precision": "bfloat16", "runtime": "torch"}
    configs["default (ONNX Runtime float32)" if not sync else "default"] = {}
    prompt_rows = {name: prompt_times(settings) for name, settings in configs.items()}
    first = {warm: first_prompt(hr, lr, box, args.device, head, warm=warm)
             for warm in (False, True)}

    reference = reference_predictor(paths["mobile_sam.pt"], args.device)
    ref_encoder = None
    if reference is not None:
        with torch.inference_mode():
            reference.set_image(hr)
            ref_encoder = median_time(lambda: reference.set_image(hr), args.repeats, sync=sync)
    levers, batches = lever_times(parts, reference, hr, lr, box, args.device, head,
                                  repeats=args.repeats, sync=sync)
    ref_prompt = levers.get("reference")

    ref_cold = None if ref_encoder is None or ref_prompt is None else 2 * ref_encoder + ref_prompt
    rows: list[tuple[str, float, float | None]] = [
        ("encoder, plain float32 (1 crop)", plain, ref_encoder),
        ("encoder, channels_last float32 (1 crop)", last, ref_encoder)]
    if compiled is not None:
        rows.append(("encoder, compiled float32 (1 crop)", compiled, ref_encoder))
    for name, (encoder, cold_wsi, _warm, _warm_sam) in prompt_rows.items():
        rows += [(f"encoder in the predictor, {name}", encoder, ref_encoder),
                 (f"cold WSI-SAM prompt, {name}", cold_wsi, ref_cold)]
    rows += [("first prompt, new predictor, no warm-up (loads)", first[False], None),
             ("first prompt after warm_up() (encoder passes only)", first[True], None)]
    rows += [(name, levers[name], ref_prompt) for name in LEVERS]
    for size, (ours, ref) in batches.items():
        rows.append((f"warm WSI-SAM, per prompt of {size} at once (default)", ours, ref))
    device = torch.cuda.get_device_name() if sync else f"CPU, {torch.get_num_threads()} threads"
    print(f"\ndevice: {device}; torch {torch.__version__}; medians of {args.repeats}+ runs; "
          f"head {head}")
    print(f"{'':56s} {'ours (s)':>9s} {'reference (s)':>14s} {'ref/ours':>9s}")
    for name, ours, ref in rows:
        ref_text = f"{ref:14.3f}" if ref is not None else f"{'-':>14s}"
        print(f"{name:56s} {ours:9.3f} {ref_text} {ratio(ours, ref):>9s}")
    if args.plot:
        plot_rows(rows, args.plot, device)
    print("reference: official MobileSAM SamPredictor, float32 eager PyTorch; its cold row is "
          "two set_image calls (HR and LR crops) + one predict; warm rows: "
          "SamPredictor.predict (batch 1, round-robin with ours) or predict_torch (batch B, "
          f"per prompt); the WSI-SAM rows use the head {head}")


def first_prompt(hr: np.ndarray, lr: np.ndarray, box: np.ndarray, device: str, head: str, *,
                 warm: bool) -> float:
    """Seconds of the first prompt of a new predictor (its weights not loaded), with or
    without `warm_up()` first (graphs already on disk from the rows before)."""
    predictor = WsiSamPredictor(device=device, head=head)
    if warm:
        predictor.warm_up()
    start = time.perf_counter()
    predictor.predict(hr, lr, boxes=box, cache_key="first")
    return time.perf_counter() - start


def plot_rows(rows: list[tuple[str, float, float | None]], path: str, device: str) -> None:
    """Warm prompts (ms) and cold prompts (s), ours beside MobileSAM's own, as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warm = [(n.strip(), o * 1e3, r * 1e3 if r else None) for n, o, r in rows
            if n.lstrip().startswith(("warm", "eager", "ONNX")) and "per prompt" not in n]
    cold = [(n.replace("cold WSI-SAM prompt, ", ""), o, r) for n, o, r in rows
            if n.startswith("cold")]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2]})
    for ax, items, unit, target in ((axes[0], warm, "ms", 60.0), (axes[1], cold, "s", 1.0)):
        names = [n for n, _, _ in items]
        ax.barh(names, [o for _, o, _ in items], color="#4c72b0", label="napari-wsi-sam")
        ref = next((r for _, _, r in items if r), None)
        if ref:
            ax.axvline(ref, color="#c44e52", linestyle="--",
                       label=f"MobileSAM's own ({ref:.3g} {unit})")
        ax.axvline(target, color="#55a868", linestyle=":", label=f"target {target:g} {unit}")
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.legend(loc="upper right", fontsize=8)
    axes[0].set_title("warm prompt (embeddings cached)")
    axes[1].set_title("cold WSI-SAM prompt\n(2 encoder passes + decoder)")
    fig.suptitle(f"WSI-SAM prompt cost, {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def ratio(ours: float, ref: float | None) -> str:
    return f"{ref / ours:5.2f}x" if ref else "   -"


def reference_predictor(checkpoint: object, device: str) -> object | None:
    """Official MobileSAM's SamPredictor, or None without the test-only package."""
    try:
        from mobile_sam import SamPredictor, sam_model_registry
    except ImportError:
        logging.warning("mobile_sam not installed: no reference column")
        return None
    model = sam_model_registry["vit_t"](checkpoint=str(checkpoint))
    return SamPredictor(model.to(device).eval())


def lever_times(parts: object, reference: object | None, hr: np.ndarray, lr: np.ndarray,
                box: np.ndarray, device: str, head: str, *, repeats: int, sync: bool
                ) -> tuple[dict[str, float], dict[int, tuple[float, float | None]]]:
    """Warm-prompt seconds per lever (round-robin with the reference decoder), and per-prompt
    seconds at larger prompt batches (ours, reference)."""
    predictor = WsiSamPredictor(device=device, parts={"mobile_sam": parts}, head=head)
    defaults = {"exact_sam": True, "decoder_precision": "float32", "stack_passes": False,
                "runtime": "auto"}
    fusion = type(predictor.head.hr.fusion)

    def lever(settings: Mapping[str, object]) -> Callable[[], object]:
        def call() -> object:
            for key, value in {**defaults, **settings}.items():
                if key not in ("legacy", "model"):
                    setattr(predictor, key, value)
            saved = fusion.project
            if settings.get("legacy"):
                fusion.project = legacy_project  # type: ignore[method-assign]
            try:
                return predictor.predict(hr, lr, boxes=box, cache_key="warm",
                                         model=settings.get("model", "wsi-sam"))
            finally:
                fusion.project = saved  # type: ignore[method-assign]
        return call

    fns: dict[str, Callable[[], object]] = {name: lever(s) for name, s in LEVERS.items()}
    if reference is not None:
        with torch.inference_mode():
            reference.set_image(hr)  # type: ignore[attr-defined]
        fns["reference"] = lambda: reference.predict(  # type: ignore[attr-defined]
            box=box[0], multimask_output=False)
    for fn in fns.values():  # warm-up: kernels, caches
        fn()
    with torch.inference_mode():
        times = round_robin(fns, repeats * 5, sync=sync)
    batches: dict[int, tuple[float, float | None]] = {}
    for size in (16, 64):
        index = np.arange(size)
        dx, dy = index % 8 * 100.0 + index // 64 * 7, index // 8 % 8 * 80.0
        boxes = box + np.stack([dx, dy, dx, dy], 1)  # an 8x8 grid of boxes over the crop
        for key, value in defaults.items():  # the default path, its default decoder batch
            setattr(predictor, key, value)
        ours = median_time(lambda b=boxes: predictor.predict(hr, lr, boxes=b, cache_key="warm"),
                           repeats, sync=sync) / size
        ref = None
        if reference is not None:
            torch_boxes = torch.as_tensor(boxes, dtype=torch.float32, device=device)
            scaled = reference.transform.apply_boxes_torch(  # type: ignore[attr-defined]
                torch_boxes, hr.shape[:2])
            with torch.inference_mode():
                ref = median_time(lambda b=scaled: reference.predict_torch(  # type: ignore
                    None, None, boxes=b, multimask_output=False), repeats, sync=sync) / size
        batches[size] = (ours, ref)
    return times, batches

if __name__ == "__main__":
    main()
