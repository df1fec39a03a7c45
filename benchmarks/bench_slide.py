"""Slide access speed: open time and memory, and one HR+LR crop pair against a raw tifffile read.

Run: ``.venv/bin/python benchmarks/bench_slide.py [--repeat N] [--size 1024]``

Writes 10,000 and 100,000 px square pyramids (Aperio layout, 256 px JPEG tiles of real H&E from
histolytics' hgsc_nest.jpg) into a temporary folder with `napari_wsi_sam.slide.synthetic`, then
for each slide, and for the real CMU SVS (one native level, virtual levels above it):

- open: median seconds of `open_slide` (the file's pages parsed, dask graphs built, one tile
  decoded as a probe), and the process RSS growth of the first open;
- crops: median seconds of `concentric_crops` (HR at 1.0 µm/px + LR at 2.0 µm/px, 1024 px);
- raw: median seconds to read the same source windows (the levels and pixel windows the crops
  decoded, clipped to the level) straight from tifffile's zarr store of an already open file,
  no dask, no resampling; the ratio crops / raw is the price of everything the crop adds
  (dask scheduling, area resampling, padding, valid masks) over plain tile decoding.

Then the two backends on the same files (the 10,000 px pyramid, the CMU SVS; ``--section
backends`` runs only this part):

- reads: the median of seeded random 512 x 512 windows at every native level through
  `Slide.read_window` with the tifffile backend, with the OpenSlide backend, and straight from
  OpenSlide's ``read_region`` on an open handle (the baseline: ratios are against it);
- crops: the same concentric crop pair through each backend, and their ratio.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openslide
import psutil
import tifffile
import zarr
from PIL import Image

from napari_wsi_sam.assets import fetch
from napari_wsi_sam.prompts import Prompt
from napari_wsi_sam.slide import concentric_crops, open_slide
from napari_wsi_sam.slide.crops import _weights
from napari_wsi_sam.slide.synthetic import he_tiles, write_pyramid


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _source_windows(slide, pair) -> list[tuple[int, int, int, int, int]]:
    """(level, x0, y0, x1, y1) each crop decoded (same rule as crops._resample)."""
    out = []
    for crop in (pair.hr, pair.lr):
        lx, ly = slide.level_scale(crop.source_level)
        m = crop.map
        _, x0, x1 = _weights(m.size[0], m.scale[0] / lx, m.origin[0] / lx)
        _, y0, y1 = _weights(m.size[1], m.scale[1] / ly, m.origin[1] / ly)
        out.append((crop.source_level, x0, y0, x1, y1))
    return out


def _raw_read(arrays: dict, windows) -> None:
    """Read the windows (clipped to the level) from already opened tifffile zarr arrays."""
    for level, x0, y0, x1, y1 in windows:
        arr = arrays[level]
        h, w = arr.shape[-3], arr.shape[-2]
        index = (slice(max(y0, 0), min(y1, h)), slice(max(x0, 0), min(x1, w)))
        np.asarray(arr[(0, *index)] if arr.ndim == 4 else arr[index])


def bench(path: Path, prompt: Prompt, *, repeat: int, size: int) -> dict:
    process = psutil.Process(os.getpid())
    gc.collect()
    before = process.memory_info().rss
    start = time.perf_counter()
    slide = open_slide(path)
    first_open = time.perf_counter() - start
    rss = (process.memory_info().rss - before) / 1e6
    slide.close()

    def reopen() -> None:
        open_slide(path).close()

    open_s = min(first_open, _median_time(reopen, repeat))
    with open_slide(path) as slide:
        pair = concentric_crops(slide, prompt, size=size)  # warm up (imports, page cache)
        crop_s = _median_time(lambda: concentric_crops(slide, prompt, size=size), repeat)
        windows = _source_windows(slide, pair)
        dims = slide.dimensions
        levels = f"{slide.native_level_count}+{slide.level_count - slide.native_level_count}"
    with tifffile.TiffFile(path) as tif:
        arrays = {lv: zarr.open_array(tif.series[0].aszarr(level=lv), mode="r")
                  for lv in {w[0] for w in windows}}
        _raw_read(arrays, windows)  # warm up like the crops
        raw_s = _median_time(lambda: _raw_read(arrays, windows), repeat)
    return {"slide": path.name, "size": f"{dims[0]}x{dims[1]}", "levels": levels,
            "MB": path.stat().st_size / 1e6, "open_s": open_s, "rss_MB": rss,
            "crops_s": crop_s, "raw_s": raw_s, "ratio": crop_s / raw_s,
            "decoded": "+".join(f"L{lv}:{x1 - x0}x{y1 - y0}" for lv, x0, y0, x1, y1 in windows)}


def _windows(dims: tuple[int, int], count: int, seed: int, side: int = 512) -> list:
    rng = np.random.default_rng(seed)
    w, h = dims
    return [(int(rng.integers(0, max(w - side, 1))), int(rng.integers(0, max(h - side, 1))))
            for _ in range(count)]


def bench_backends(path: Path, prompt: Prompt, *, repeat: int, size: int,
                   reads: int) -> list[dict]:
    """Per native level: random 512² reads through both backends and raw read_region."""
    rows = []
    with open_slide(path, backend="tifffile") as tf, open_slide(path, backend="openslide") as osl, \
            openslide.OpenSlide(str(path)) as handle:
        for level in range(tf.native_level_count):
            dims = tf.level_dimensions[level]
            side = min(512, *dims)
            spots = _windows(dims, reads, seed=level, side=side)
            ds = handle.level_downsamples[level]

            def read(slide, spots=spots, level=level, side=side) -> None:
                for x, y in spots:
                    slide.read_window(level, x0=x, y0=y, x1=x + side, y1=y + side)

            def raw(spots=spots, level=level, side=side, ds=ds) -> None:
                for x, y in spots:
                    np.asarray(handle.read_region((round(x * ds), round(y * ds)), level,
                                                  (side, side)))

            for fn in (lambda: read(tf), lambda: read(osl), raw):
                fn()  # warm up (page cache, codecs)
            t_tf = _median_time(lambda: read(tf), repeat) / reads
            t_os = _median_time(lambda: read(osl), repeat) / reads
            t_raw = _median_time(raw, repeat) / reads
            rows.append({"slide": path.name, "what": f"L{level} {side}² read",
                         "tifffile": t_tf, "openslide": t_os, "raw": t_raw})
        concentric_crops(tf, prompt, size=size)
        concentric_crops(osl, prompt, size=size)
        c_tf = _median_time(lambda: concentric_crops(tf, prompt, size=size), repeat)
        c_os = _median_time(lambda: concentric_crops(osl, prompt, size=size), repeat)
        rows.append({"slide": path.name, "what": f"crop pair {size}", "tifffile": c_tf,
                     "openslide": c_os, "raw": None})
    return rows


def print_backends(rows: list[dict], *, reads: int, repeat: int) -> None:
    header = (f"{'slide':<24}{'what':<18}{'tifffile ms':>12}{'OpenSlide ms':>14}"
              f"{'read_region ms':>16}{'tifffile/OS':>13}{'tifffile/raw':>14}"
              f"{'OS backend/raw':>16}")
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = r["tifffile"] / r["openslide"]
        raw = "-" if r["raw"] is None else f"{r['raw'] * 1e3:.2f}"
        overhead = "-" if r["raw"] is None else f"{r['openslide'] / r['raw']:.2f}"
        vs_raw = "-" if r["raw"] is None else f"{r['tifffile'] / r['raw']:.2f}"
        print(f"{r['slide']:<24}{r['what']:<18}{r['tifffile'] * 1e3:>12.2f}"
              f"{r['openslide'] * 1e3:>14.2f}{raw:>16}{ratio:>13.2f}{vs_raw:>14}{overhead:>16}")
    print(f"\nreads: mean ms per window over {reads} seeded random windows, median of {repeat} "
          "runs; tifffile/OS < 1: the tifffile backend is faster than the OpenSlide backend; "
          "tifffile/raw and OS backend/raw: each backend's Slide.read_window against a bare "
          "read_region on an open OpenSlide handle")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--reads", type=int, default=20, help="random windows per level")
    parser.add_argument("--section", choices=("all", "crops", "backends"), default="all")
    args = parser.parse_args(argv)
    he = np.asarray(Image.open(fetch("hgsc_nest.jpg")["hgsc_nest.jpg"]).convert("RGB"))
    tiles = he_tiles(he, tile=256, count=6, seed=1)
    rows: list[dict] = []
    backend_rows: list[dict] = []
    cmu = fetch("cmu_small_region.svs")["cmu_small_region.svs"]
    cmu_box = Prompt.from_box([1000, 1400, 1300, 1600])
    with tempfile.TemporaryDirectory(prefix="wsi-sam-bench-") as tmp:
        if args.section in ("all", "backends"):
            path = Path(tmp) / "backends_10k.svs"
            write_pyramid(path, tiles, width=10_000, height=10_000, layout="svs", mpp=0.25)
            backend_rows += bench_backends(path, Prompt.from_box([6000, 6000, 6400, 6300]),
                                           repeat=args.repeat, size=args.size, reads=args.reads)
            backend_rows += bench_backends(cmu, cmu_box, repeat=args.repeat, size=args.size,
                                           reads=args.reads)
        for side in (10_000, 100_000) if args.section in ("all", "crops") else ():
            path = Path(tmp) / f"synthetic_{side // 1000}k.svs"
            start = time.perf_counter()
            write_pyramid(path, tiles, width=side, height=side, layout="svs", mpp=0.25)
            print(f"wrote {path.name} in {time.perf_counter() - start:.2f} s "
                  f"({path.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
            c = side * 0.6
            rows.append(bench(path, Prompt.from_box([c, c, c + 400, c + 300]),
                              repeat=args.repeat, size=args.size))
        if args.section in ("all", "crops"):
            rows.append(bench(cmu, cmu_box, repeat=args.repeat, size=args.size))
    if backend_rows:
        print_backends(backend_rows, reads=args.reads, repeat=args.repeat)
    if not rows:
        return 0
    print()
    header = (f"{'slide':<24}{'size':>14}{'levels':>8}{'file MB':>9}{'open s':>9}"
              f"{'open RSS MB':>13}{'crops s':>9}{'raw s':>8}{'ratio':>7}  decoded windows")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['slide']:<24}{r['size']:>14}{r['levels']:>8}{r['MB']:>9.1f}{r['open_s']:>9.3f}"
              f"{r['rss_MB']:>13.1f}{r['crops_s']:>9.3f}{r['raw_s']:>8.3f}{r['ratio']:>7.2f}  "
              f"{r['decoded']}")
    print(f"\nlevels: native+virtual; crops: one HR (1.0 µm/px) + LR (2.0 µm/px) pair of "
          f"{args.size} px; medians of {args.repeat}; {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
