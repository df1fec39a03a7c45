"""Training speed with cached encoder features, and the one-off cost of building the cache.

Run: ``.venv/bin/python benchmarks/bench_train.py [--views 4] [--steps 6] [--device cpu]
[--first-head 100]``

On the real hgsc_nest nuclei with the real MobileSAM weights, in one process:

- cache build: plan ``--views`` crop pairs and encode them into a fresh temporary feature
  cache (cut crops + 2 encoder passes per view, written in half precision);
- cache read: the same views again, read back from disk;
- steps: ``--steps`` optimiser steps of 4 prompts each for ``wsi-sam`` and ``sam-decoder``
  (SAM*), features from the cache;
- baseline: what a step would cost without the cache (its view's 2 encoder passes + the
  step), the way a trainer that re-encodes each crop runs.

- first head (``--first-head N``, 0 to skip): what the widget's *Train head* does from N
  nuclei of hgsc_nest in a slide's object store, at 40x, with a fresh feature cache: the
  held-out split, encoding, training with the widget's defaults, and the held-out comparison
  with SAM. Target: under 10 minutes from 100 objects on a 2-core CPU.

"ratio" is each row's time over the baseline's (below 1 is faster).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from napari_wsi_sam.model.predictor import WsiSamPredictor
from napari_wsi_sam.model.sam import load_sam
from napari_wsi_sam.train.datasets import load_data
from napari_wsi_sam.train.trainer import TrainConfig, feature_cache_for, prepare_views, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--first-head", type=int, default=100, metavar="N",
                        help="objects for the time-to-a-first-head row (0: skip it)")
    args = parser.parse_args()
    data = load_data("builtin:hgsc_nest")
    mobile = load_sam("mobile_sam", device="cpu")
    encoder = WsiSamPredictor(model="sam", device=args.device, cache_bytes=0,
                              parts={"mobile_sam": mobile})
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        features = Path(tmp) / "features"
        config = TrainConfig(views_per_image=args.views, objects_per_view=4 * args.steps,
                             batch=4, epochs=1)
        cache = feature_cache_for(encoder, features)
        started = time.perf_counter()
        prepared = prepare_views(data, config, encoder=encoder, cache=cache)
        build = (time.perf_counter() - started) / len(prepared)
        cache = feature_cache_for(encoder, features)
        started = time.perf_counter()
        prepare_views(data, config, encoder=encoder, cache=cache)
        read = (time.perf_counter() - started) / len(prepared)
        size = sum(p.stat().st_size for p in features.rglob("*.pt")) / len(prepared) / 2**20
        rows.append(("cache build, per view", build, f"{len(prepared)} views, {size:.1f} MB"))
        rows.append(("cache read, per view", read, "includes rasterising its objects"))
        step_times = {}
        for mode in ("wsi-sam", "sam-decoder"):
            result = train(data, TrainConfig(mode=mode, views_per_image=args.views,  # type: ignore[arg-type]
                                             objects_per_view=4 * args.steps, batch=4,
                                             epochs=1),
                           Path(tmp) / mode, device=args.device, feature_dir=features,
                           parts=mobile, max_steps=args.steps)
            seconds = [row["seconds"] for row in result.history[1:]]  # first step warms up
            step_times[mode] = statistics.median(seconds)
            rows.append((f"{mode} step (4 prompts)", step_times[mode],
                         f"{1 / step_times[mode]:.2f} steps/s, {args.steps - 1} timed"))
        encoder_pass = build / 2
        baseline = 2 * encoder_pass + step_times["wsi-sam"]
        rows.insert(0, ("baseline: wsi-sam step re-encoding its view", baseline,
                        f"2 x {encoder_pass:.2f} s encoder + step"))
        if args.first_head:
            seconds, note = first_head(data[0], args.first_head, Path(tmp), args.device, mobile)
            rows.append((f"first head from {args.first_head} objects (widget)", seconds, note))
    device = args.device if args.device != "cpu" else f"cpu, {torch.get_num_threads()} threads"
    print(f"bench_train on {device}, torch {torch.__version__}")
    print(f"{'what':48s} {'seconds':>9s} {'ratio':>7s}  note")
    for name, seconds, note in rows:
        print(f"{name:48s} {seconds:9.3f} {seconds / baseline:7.2f}  {note}")


def first_head(image, n: int, tmp: Path, device: str, mobile) -> tuple[float, str]:
    """Seconds from pressing Train head to the held-out comparison, on a slide whose store
    holds `n` nuclei (as annotated), with an empty feature cache."""
    import os
    import shutil

    import numpy as np
    import tifffile
    from PIL import Image

    from napari_wsi_sam.paths import HOME_ENV
    from napari_wsi_sam.pipeline.objects import import_objects
    from napari_wsi_sam.session import AnnotationSession
    from napari_wsi_sam.session.training import train_head

    weights = Path(mobile.checkpoint).parent if mobile.checkpoint else None
    os.environ[HOME_ENV] = str(tmp / "home")  # a fresh cache: every crop is encoded
    if weights is not None:
        os.environ["NAPARI_WSI_SAM_WEIGHTS"] = str(weights)
    slide = tmp / "nest.tif"
    tifffile.imwrite(slide, np.asarray(Image.open(image.image).convert("RGB")),
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER", tile=(256, 256))
    from napari_wsi_sam.formats import AnnotationObject, write_geojson

    order = np.random.default_rng(0).permutation(len(image.objects))[:n]
    geojson = tmp / "nuclei.geojson"
    write_geojson([AnnotationObject(id=int(i) + 1, geometry=image.objects[i].geometry,
                                    class_name="nucleus") for i in order], geojson)
    session = AnnotationSession.open(slide, device=device)
    import_objects(session.store, geojson)
    session.hr_mpp = 0.25
    started = time.perf_counter()
    trained = train_head(session, ["nucleus"])
    seconds = time.perf_counter() - started
    session.close()
    shutil.rmtree(tmp / "home", ignore_errors=True)
    met = "met" if seconds < 600 else "MISSED"
    return seconds, (f"{trained.plan.n_train} trained, {trained.plan.n_heldout} held out; "
                     f"{trained.summary()}; target < 600 s: {met}")


if __name__ == "__main__":
    main()
