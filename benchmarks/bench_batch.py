"""Batch refine speed: N nearby boxes on the real CMU slide, grouped by crop vs. one at a time.

Run: ``.venv/bin/python benchmarks/bench_batch.py [--n 20] [--model sam] [--device cpu]``

The boxes: five hand-picked small structures (the follicle, a hole in the keratin, a small
vessel, two dermal papillae) plus 120 x 120 px tiles on tissue of a grid over the lower half
of the section (level-0 px), up to ``--n``. Two runs in the same process, each with a fresh
predictor (empty embedding cache, weights shared) after one warm-up encoder pass:

- grouped: `refine_batch` (crop centres snapped to the half-crop grid, one crop pair and one
  predictor call per group), objects written to an object store in a temporary folder;
- one at a time: `segment_prompt(snap=False)` per box, the crops centred on each box, so every
  box pays for its own crops and encoder pass (the store is not written).

"ratio" is the one-at-a-time time per object over the grouped one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_wsi_sam.annotations import open_store
from napari_wsi_sam.assets import fetch
from napari_wsi_sam.model.predictor import WsiSamPredictor
from napari_wsi_sam.pipeline import BatchItem, group_by_crop, refine_batch, segment_prompt
from napari_wsi_sam.prompts import Prompt
from napari_wsi_sam.slide import Slide, open_slide

NAMED = [(1185, 1980, 1345, 2185), (1165, 1605, 1295, 1690), (1000, 2475, 1065, 2565),
         (1690, 2535, 1790, 2650), (1595, 2665, 1685, 2840)]


def boxes(slide: Slide, n: int) -> list[tuple[float, float, float, float]]:
    """The named structures, then 120 px tiles whose mean brightness says tissue."""
    out: list[tuple[float, float, float, float]] = [tuple(map(float, b)) for b in NAMED]
    for y in range(1650, 2850, 150):
        for x in range(1000, 1900, 150):
            tile = slide.read_window(0, x0=x, y0=y, x1=x + 120, y1=y + 120)
            if np.asarray(tile).mean() < 215:
                out.append((x, y, x + 120.0, y + 120.0))
    return out[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--model", default="sam", choices=["sam", "wsi-sam", "medsam"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    path = fetch("cmu_small_region.svs")["cmu_small_region.svs"]
    with open_slide(path) as slide:
        chosen = boxes(slide, args.n)
        items = [BatchItem(prompt=Prompt.from_box(b)) for b in chosen]
        base = WsiSamPredictor(model=args.model, device=args.device)
        base.encode(np.zeros((1024, 1024, 3), np.uint8))  # load weights, warm the kernels
        shared = {name: base.parts(name) for name in ("mobile_sam",)} if args.model != \
            "medsam" else {"lite_medsam": base.parts("lite_medsam")}

        def fresh() -> WsiSamPredictor:
            return WsiSamPredictor(model=args.model, device=args.device, parts=shared)

        groups, _ = group_by_crop(slide, items)
        grouped = fresh()
        with tempfile.TemporaryDirectory() as folder:
            with open_store(slide, folder=Path(folder) / "labels") as store:
                started = time.perf_counter()
                steps = list(refine_batch(slide, items, grouped, store=store))
                t_grouped = time.perf_counter() - started
        single = fresh()
        started = time.perf_counter()
        for item in items:
            segment_prompt(slide, item.prompt, single, snap=False)
        t_single = time.perf_counter() - started
    n = len(items)
    ok = sum(s.object_id is not None for s in steps)
    print(f"{args.model} on {grouped.device}: {n} boxes on {path.name}, {len(groups)} crop "
          f"groups, {ok} objects")
    print("| run | encoder calls | total s | s / object | ratio |\n|---|---|---|---|---|")
    print(f"| grouped batch (refine_batch) | {grouped.encoder_calls} | {t_grouped:.2f} | "
          f"{t_grouped / n:.3f} | 1.0 |")
    print(f"| one segment_prompt per box, no snapping | {single.encoder_calls} | "
          f"{t_single:.2f} | {t_single / n:.3f} | {t_single / t_grouped:.1f} |")


if __name__ == "__main__":
    main()
