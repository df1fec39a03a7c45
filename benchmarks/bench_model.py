"""Time the encoder, a cold WSI-SAM prompt and a warm (cached) prompt, against official MobileSAM.

Run: ``python benchmarks/bench_model.py [--device cpu|cuda] [--compile] [--repeats 3]``.
Prints one table (medians, seconds). The reference rows need the test-only ``mobile_sam``
package (mobilesam-mirror); they are skipped without it. On a shared CPU, timings are noisy.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from napari_wsi_sam.assets import fetch
from napari_wsi_sam.model import load_sam
from napari_wsi_sam.model.device import encoder_dtype
from napari_wsi_sam.model.encoder import optimise_for_inference
from napari_wsi_sam.model.predictor import WsiSamPredictor


def median_time(fn: Callable[[], object], repeats: int, *, sync: bool) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
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

    def prompt_times(precision: str) -> tuple[float, float, float, float]:
        """(encoder pass, cold WSI-SAM prompt, warm WSI-SAM prompt, warm SAM prompt)."""
        predictor = WsiSamPredictor(device=args.device, parts={"mobile_sam": parts},
                                    precision=precision)
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

    fp32 = prompt_times("float32")
    auto = prompt_times("auto")
    auto_dtype = encoder_dtype(torch.device(args.device), "auto")
    auto_name = "float32" if auto_dtype is None else str(auto_dtype).replace("torch.", "")

    ref_encoder = ref_prompt = None
    try:
        from mobile_sam import SamPredictor, sam_model_registry
    except ImportError:
        logging.warning("mobile_sam not installed: no reference rows")
    else:
        model = sam_model_registry["vit_t"](checkpoint=str(paths["mobile_sam.pt"]))
        reference = SamPredictor(model.to(args.device).eval())
        with torch.inference_mode():
            reference.set_image(hr)
            ref_encoder = median_time(lambda: reference.set_image(hr), args.repeats, sync=sync)
            ref_prompt = median_time(lambda: reference.predict(box=box[0], multimask_output=False),
                                     args.repeats * 3, sync=sync)

    def ratio(ours: float, ref: float | None) -> str:
        return f"{ref / ours:5.2f}x" if ref else "   -"

    ref_cold = None if ref_encoder is None or ref_prompt is None else 2 * ref_encoder + ref_prompt
    rows = [("encoder, plain float32 (1 crop)", plain, ref_encoder),
            ("encoder, channels_last float32 (1 crop)", last, ref_encoder)]
    if compiled is not None:
        rows.append(("encoder, compiled float32 (1 crop)", compiled, ref_encoder))
    for name, (encoder, cold_wsi, warm_wsi, warm_sam) in (("float32", fp32),
                                                          (f"auto={auto_name}", auto)):
        rows += [(f"encoder in the predictor, {name} (1 crop)", encoder, ref_encoder),
                 (f"cold WSI-SAM prompt, {name} (2 passes + decoder)", cold_wsi, ref_cold),
                 (f"warm WSI-SAM prompt, {name} (cached)", warm_wsi, ref_prompt),
                 (f"warm SAM prompt, {name} (cached)", warm_sam, ref_prompt)]
    device = torch.cuda.get_device_name() if sync else f"CPU, {torch.get_num_threads()} threads"
    print(f"\ndevice: {device}; torch {torch.__version__}; medians of {args.repeats}+ runs")
    print(f"{'':56s} {'ours (s)':>9s} {'reference (s)':>14s} {'ref/ours':>9s}")
    for name, ours, ref in rows:
        ref_text = f"{ref:14.3f}" if ref is not None else f"{'-':>14s}"
        print(f"{name:56s} {ours:9.3f} {ref_text} {ratio(ours, ref):>9s}")
    print("reference: official MobileSAM SamPredictor, float32; its cold row is two set_image "
          "calls (HR and LR crops) + one predict")


if __name__ == "__main__":
    main()
