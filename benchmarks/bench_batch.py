"""Batch refine speed: grouped by crop vs. one at a time, and cohorts on dask.distributed.

Run: ``.venv/bin/python benchmarks/bench_batch.py [--n 20] [--model sam] [--device cpu]
[--cohort 20] [--workers 2]``

The boxes: five hand-picked small structures (the follicle, a hole in the keratin, a small
vessel, two dermal papillae) plus 120 x 120 px tiles on tissue of a grid over the lower half
of the section (level-0 px), up to ``--n``. Two runs in the same process, each with a fresh
predictor (empty embedding cache, weights shared) after one warm-up encoder pass:

- grouped: `refine_batch` (crop centres snapped to the half-crop grid, one crop pair and one
  predictor call per group), objects written to an object store in a temporary folder;
- one at a time: `segment_prompt(snap=False)` per box, the crops centred on each box, so every
  box pays for its own crops and encoder pass (the store is not written).

"ratio" is the one-at-a-time time per object over the grouped one.

Cohort (``--cohort P``, 0 to skip): three slides (the CMU slide and two pyramids written from
real H&E tiles) with P boxes each, spread over several crop groups, refined by `batch`'s
`run_batch` on a LocalCluster of 1 and of ``--workers`` processes (one thread each, the same
prompts, ``force`` so both runs segment everything); then `precompute` of the CMU slide's
tissue on the larger cluster; then one prompt on a precomputed node against the same prompt
with a cold embedding cache (models loaded in both). Ratios: prompts per second over the
1-worker run's; first-prompt time over the cold one's. Memory: the largest worker's peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_wsi_sam.assets import fetch
from napari_wsi_sam.model.predictor import WsiSamPredictor
from napari_wsi_sam.pipeline import BatchItem, group_by_crop, refine_batch, segment_prompt
from napari_wsi_sam.prompts import Prompt
from napari_wsi_sam.slide import Slide, open_slide
from napari_wsi_sam.store import open_store

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


def cohort(args: argparse.Namespace, cmu: Path) -> None:
    """The cohort table (see the module docstring)."""
    import shutil
    import threading

    import psutil

    from napari_wsi_sam.cohort.batch import run_batch
    from napari_wsi_sam.cohort.executor import open_executor
    from napari_wsi_sam.cohort.manifest import read_manifest
    from napari_wsi_sam.cohort.precompute import run_precompute
    from napari_wsi_sam.model.registry import parse_choice
    from napari_wsi_sam.pipeline.embedding_store import attach
    from napari_wsi_sam.slide.synthetic import he_tiles, write_pyramid

    def worker_peak(stop: threading.Event, peak: list[int]) -> None:
        me = psutil.Process()
        while not stop.is_set():
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "spawn_main" in " ".join(child.cmdline()):
                        peak[0] = max(peak[0], child.memory_info().rss)
            time.sleep(0.2)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copy(cmu, root / cmu.name)
        from PIL import Image

        he = np.asarray(Image.open(fetch("hgsc_nest.jpg")["hgsc_nest.jpg"]).convert("RGB"))
        tiles = list(he_tiles(he, tile=256, count=6, seed=1))
        write_pyramid(root / "a.svs", tiles, width=8000, height=6000, layout="svs", mpp=0.5)
        write_pyramid(root / "b.ome.tif", tiles, width=6000, height=6000, layout="ome", mpp=0.5)
        lines = ["slide,prompts,out,model"]
        with open_slide(root / cmu.name) as slide:
            cmu_boxes = boxes(slide, args.cohort)
        for name, chosen in [(cmu.name, cmu_boxes), ("a.svs", _spread(8000, 6000, args.cohort)),
                             ("b.ome.tif", _spread(6000, 6000, args.cohort))]:
            features = [{"type": "Feature", "properties": {}, "geometry": {
                "type": "Polygon", "coordinates": [[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]],
                                                    [b[0], b[3]], [b[0], b[1]]]]}}
                        for b in chosen]
            stem = name.split(".")[0]
            (root / f"{stem}.geojson").write_text(json.dumps(
                {"type": "FeatureCollection", "features": features}))
            lines.append(f"{name},{stem}.geojson,{stem}.out.geojson,{args.model}")
        (root / "cohort.csv").write_text("\n".join(lines) + "\n")
        rows = read_manifest(root / "cohort.csv")
        prompts = sum(len(json.loads((root / f"{n.split('.')[0]}.geojson").read_text())[
            "features"]) for n in (cmu.name, "a.svs", "b.ome.tif"))
        results = []
        for workers in (1, args.workers):
            stop, peak = threading.Event(), [0]
            watcher = threading.Thread(target=worker_peak, args=(stop, peak), daemon=True)
            started = time.perf_counter()
            with open_executor(workers=workers, scheduler=None, device=args.device) as ex:
                ready = time.perf_counter() - started
                watcher.start()
                began = time.perf_counter()
                reports = run_batch(rows, ex, force=True)
                seconds = time.perf_counter() - began
            stop.set()
            watcher.join()
            objects = sum(r.objects for r in reports)
            results.append((workers, ready, seconds, objects, peak[0]))
        stop, peak = threading.Event(), [0]
        watcher = threading.Thread(target=worker_peak, args=(stop, peak), daemon=True)
        with open_executor(workers=args.workers, scheduler=None, device=args.device) as ex:
            watcher.start()
            began = time.perf_counter()
            (pre,) = run_precompute([root / cmu.name], ex, choice=parse_choice(args.model),
                                    hr_mpp=1.0)
            t_pre = time.perf_counter() - began
        stop.set()
        watcher.join()
        # First prompt: the same box, models loaded, embedding cache empty, with and
        # without the stored embeddings.
        prompt = Prompt.from_box(NAMED[0])
        first = {}
        with open_slide(root / cmu.name) as slide:
            loaded = WsiSamPredictor(model=args.model, device=args.device)
            loaded.encode(np.zeros((1024, 1024, 3), np.uint8))
            shared = {"mobile_sam": loaded.parts("mobile_sam")}
            for label, use in (("cold", False), ("precomputed", True)):
                predictor = WsiSamPredictor(model=args.model, device=args.device, parts=shared)
                if use:
                    attach(predictor)
                started = time.perf_counter()
                segment_prompt(slide, prompt, predictor, hr_mpp=1.0)
                first[label] = (time.perf_counter() - started, predictor.encoder_calls)
    base_rate = results[0][3] / results[0][2]
    print(f"\ncohort: 3 slides, {prompts} prompts, {args.model} on {args.device}, "
          f"{psutil.cpu_count()} cores")
    print("| run | cluster start s | run s | prompts / s | ratio | peak RSS per worker MB |")
    print("|---|---|---|---|---|---|")
    for workers, ready, seconds, objects, rss in results:
        print(f"| batch, {workers} worker{'s' if workers > 1 else ''} | {ready:.1f} | "
              f"{seconds:.1f} | {objects / seconds:.2f} | {objects / seconds / base_rate:.2f} "
              f"| {rss / 2**20:.0f} |")
    print(f"| precompute, {args.workers} workers: {pre.computed} nodes of "
          f"{pre.nodes} on tissue ({pre.tissue:.0%}) | - | {t_pre:.1f} | "
          f"{2 * pre.computed / t_pre:.2f} crops / s | - | {peak[0] / 2**20:.0f} |")
    print(f"\nstored per node (HR + LR, float16, zstd): {pre.bytes_per_node / 2**20:.2f} MB")
    print("| first prompt | encoder calls | s | ratio |\n|---|---|---|---|")
    cold = first["cold"][0]
    for label, (seconds, calls) in first.items():
        print(f"| {label} | {calls} | {seconds:.2f} | {seconds / cold:.2f} |")


def _spread(width: int, height: int, n: int) -> list[tuple[float, float, float, float]]:
    """n boxes of 140 x 120 px on a regular grid over the slide (several crop groups)."""
    side = max(1, int(np.ceil(np.sqrt(n))))
    out = []
    for k in range(n):
        x = (k % side + 0.5) * width / side
        y = (k // side + 0.5) * height / side
        out.append((x - 70.0, y - 60.0, x + 70.0, y + 60.0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--model", default="sam", choices=["sam", "wsi-sam", "medsam"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cohort", type=int, default=20, metavar="P",
                        help="prompts per slide of the cohort rows (0: skip them)")
    parser.add_argument("--workers", type=int, default=2)
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
    if args.cohort:
        cohort(args, path)


if __name__ == "__main__":
    main()
