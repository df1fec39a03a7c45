"""Segment all, time per mm² at 40x: the instance decoder against the point grid, one run.

Run: ``.venv/bin/python benchmarks/bench_auto.py [--grid-region X0 Y0 X1 Y1] [--big-mm2 4]``

All on the held-out hgsc_stromal image (1500² px at 0.5 µm/px; HR 0.25 µm/px = 40x), with a
fresh predictor per method (weights shared, models loaded and one encoder pass made before
timing), objects written to stores in a temporary folder:

- grid: the point grid (`auto_grid`, 64 points per HR crop side, WSI-SAM with the shipped
  head) on `--grid-region` (default the central 256² px, 1,024 points). Its cost grows with
  the number of points, i.e. with the area, so its time per mm² holds for any region;
- grid, eager PyTorch: the same on the eager decoder, i.e. the grid as it was when issue 20
  asked for 80x (before the ONNX Runtime prompt path of issue 21 made every prompt faster);
- decoder, same region: the instance decoder on the same small region (one tile: the rate of a
  region much smaller than a tile is the decoder's worst);
- decoder, whole image: on all 1500² px (0.56 mm²), the rate of a real region;
- decoder + refine, whole image: each proposal through WSI-SAM too;
- a box prompt, cold (two encoder passes and the decoder, model loaded), and `segment --auto`
  by decoder on a region of 2x2 tiles: the ratio of the two is what a user waits for Segment
  all over what one box costs;
- with ``--big-mm2 A`` (0 to skip): a pyramid of A mm² written from real tiles at 0.25 µm/px,
  segmented whole by the decoder; its time per mm² and the process's peak RSS.
"ratio" is the grid's seconds per mm² over the row's, "vs eager" the eager grid's.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely
import torch

from napari_wsi_sam.model.instance_model import InstanceModel
from napari_wsi_sam.model.instance_registry import default_instance_decoder
from napari_wsi_sam.model.predictor import WsiSamPredictor
from napari_wsi_sam.model.registry import best_shipped_head, shipped_heads
from napari_wsi_sam.model.sam import load_sam
from napari_wsi_sam.pipeline.auto_decoder import DecoderSettings, segment_all_decoder
from napari_wsi_sam.pipeline.auto_grid import AutoSettings, segment_all
from napari_wsi_sam.pipeline.segment import segment_prompt
from napari_wsi_sam.prompts import Prompt
from napari_wsi_sam.slide import open_slide
from napari_wsi_sam.store import open_store
from napari_wsi_sam.train.datasets import load_data

HR_MPP = 0.25


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def area_mm2(region: shapely.Geometry, mpp: float) -> float:
    return region.area * mpp * mpp / 1e6


def predictor_for(mobile, runtime: str = "auto") -> WsiSamPredictor:
    predictor = WsiSamPredictor(model="wsi-sam", head=best_shipped_head(shipped_heads()).name,
                                device="cpu",
                                parts={"mobile_sam": mobile}, runtime=runtime)  # type: ignore[arg-type]
    predictor.encode(np.full((1024, 1024, 3), 200, np.uint8))  # warm: weights and kernels
    return predictor


def run(generator) -> tuple[float, int]:
    started = time.perf_counter()
    added = 0
    for step in generator:
        added = step.added
    return time.perf_counter() - started, added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid-region", type=float, nargs=4, default=(622, 622, 878, 878))
    parser.add_argument("--big-mm2", type=float, default=0.0)
    parser.add_argument("--skip-grid", action="store_true", help="(reuse --grid-seconds)")
    parser.add_argument("--grid-seconds-per-mm2", type=float, nargs=2, default=None,
                        metavar=("GRID", "EAGER_GRID"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    stromal = load_data("builtin:hgsc_stromal")[0]
    mobile = load_sam("mobile_sam", device="cpu")
    entry = default_instance_decoder(HR_MPP)
    assert entry is not None, "no instance decoder at 40x"
    model = InstanceModel.load(entry.path)
    rows: list[tuple[str, float, float, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp, open_slide(stromal.image, mpp=0.5) as slide:
        small = shapely.box(*args.grid_region)
        whole = shapely.box(0, 0, *slide.dimensions)

        def store(name: str):
            return open_store(slide, folder=Path(tmp) / name)

        if not args.skip_grid:
            with store("grid") as s:
                seconds, n = run(segment_all(slide, small, predictor_for(mobile), store=s,
                                             hr_mpp=HR_MPP, settings=AutoSettings()))
            rows.append(("grid (64 points per side), small region", area_mm2(small, 0.5),
                         seconds, n, peak_rss_gb()))
            with store("grid_eager") as s:
                seconds, n = run(segment_all(slide, small, predictor_for(mobile, "torch"),
                                             store=s, hr_mpp=HR_MPP, settings=AutoSettings()))
            rows.append(("grid, eager PyTorch, small region", area_mm2(small, 0.5),
                         seconds, n, peak_rss_gb()))
        for name, region, refine in (("decoder, small region", small, False),
                                     ("decoder, whole image", whole, False),
                                     ("decoder + refine, whole image", whole, True)):
            with store(name.replace(" ", "_").replace(",", "")) as s:
                seconds, n = run(segment_all_decoder(
                    slide, region, model, predictor_for(mobile), store=s,
                    settings=DecoderSettings(refine=refine)))
            rows.append((name, area_mm2(region, 0.5), seconds, n, peak_rss_gb()))
        # one box prompt, cold, against Segment all over 2x2 tiles
        predictor = predictor_for(mobile)
        started = time.perf_counter()
        segment_prompt(slide, Prompt(box=np.array([700.0, 700.0, 716.0, 714.0])), predictor,
                       hr_mpp=HR_MPP, snap=False)
        box_seconds = time.perf_counter() - started
        core = (1024 - 2 * DecoderSettings().halo_px) * HR_MPP / 0.5
        few = shapely.box(300, 300, 300 + 2 * core - 1, 300 + 2 * core - 1)
        with store("few") as s:
            few_seconds, few_n = run(segment_all_decoder(slide, few, model, predictor_for(mobile),
                                                         store=s))
    if args.big_mm2 > 0:
        from napari_wsi_sam.slide.synthetic import he_tiles, write_pyramid

        with tempfile.TemporaryDirectory() as tmp:
            from PIL import Image

            image = np.asarray(Image.open(stromal.image).convert("RGB"))
            side = int(np.sqrt(args.big_mm2) * 1000 / 0.25)
            path = write_pyramid(Path(tmp) / "big.svs", he_tiles(image, count=8), width=side,
                                 height=side, mpp=0.25)
            with open_slide(path) as slide, open_store(slide, folder=Path(tmp) / "s") as s:
                region = shapely.box(0, 0, side, side)
                seconds, n = run(segment_all_decoder(slide, region, model,
                                                     predictor_for(mobile), store=s))
                rows.append((f"decoder, {args.big_mm2:g} mm² pyramid", area_mm2(region, 0.25),
                             seconds, n, peak_rss_gb()))
    grid, eager = (args.grid_seconds_per_mm2 if args.skip_grid
                   else (rows[0][2] / rows[0][1], rows[1][2] / rows[1][1]))
    print(f"{'method':<40} {'mm²':>7} {'seconds':>9} {'s per mm²':>10} {'h per mm²':>9} "
          f"{'objects':>8} {'ratio':>7} {'vs eager':>8} {'peak RSS GB':>11}")
    for name, mm2, seconds, n, rss in rows:
        rate = seconds / mm2
        print(f"{name:<40} {mm2:>7.4f} {seconds:>9.1f} {rate:>10.0f} {rate / 3600:>9.3f} "
              f"{n:>8} {grid / rate:>7.1f} {eager / rate:>8.1f} {rss:>11.2f}")
    print(f"box prompt, cold: {box_seconds:.2f} s; segment all by decoder over 2x2 tiles: "
          f"{few_seconds:.1f} s ({few_n} objects) = {few_seconds / box_seconds:.1f}x a box")


if __name__ == "__main__":
    main()
