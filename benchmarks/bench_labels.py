"""Label store speed: create, add an object, undo, reopen, against a naive zarr write.

Run: ``.venv/bin/python benchmarks/bench_labels.py [--repeat N]``

For square slides of 10,000 and 100,000 px (levels at downsample 1, 4, 16, 64 while a level
keeps at least 512 px, like an Aperio pyramid; 1024 px chunks), in a temporary folder:

- create: seconds of `LabelStore.create` and the folder's size afterwards (metadata only);
- add: median seconds of `add_object` for a disc filling a 500² or 4000² window, each repeat at
  a fresh place: pre-images read, undo data written and fsynced, every level painted, the table
  written atomically;
- naive: the same disc written the plain way on a second store of the same size, every level's
  whole window read, `np.where`-ed and assigned back (no journal, no undo data, every chunk
  under the window rewritten); ratio = add / naive;
- undo: median seconds of `undo()` of those objects; reopen: seconds of `LabelStore.open`.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from napari_wsi_sam.annotations.label_ops import source_index
from napari_wsi_sam.annotations.labels import LabelStore

logger = logging.getLogger("bench_labels")


def downsamples_for(side: int) -> list[float]:
    out = [1.0]
    while side / (out[-1] * 4) >= 512 and len(out) < 4:
        out.append(out[-1] * 4)
    return out


def disc(side: int) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    c = side / 2
    return (yy + 0.5 - c) ** 2 + (xx + 0.5 - c) ** 2 < c * c


def naive_add(store: LabelStore, mask: np.ndarray, window: tuple[int, int, int, int],
              object_id: int) -> None:
    """Baseline: read, modify and assign every level's whole window with plain zarr calls."""
    x0, y0, x1, y1 = window
    h0, w0 = store.shape
    for (hk, wk), d, array in zip(store.level_shapes, store.downsamples, store.levels,
                                  strict=True):
        lx0, sx = source_index(x0, x1, d=d, n_level=wk, n0=w0)
        ly0, sy = source_index(y0, y1, d=d, n_level=hk, n0=h0)
        mk = mask[np.ix_(sy - y0, sx - x0)]
        region = (slice(ly0, ly0 + mk.shape[0]), slice(lx0, lx0 + mk.shape[1]))
        array[region] = np.where(mk, object_id, np.asarray(array[region]))


def folder_kb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1024


def bench_side(root: Path, side: int, *, repeat: int) -> list[dict[str, object]]:
    ds = downsamples_for(side)
    start = time.perf_counter()
    store = LabelStore.create(root / f"s{side}", shape=(side, side), downsamples=ds)
    create_s = time.perf_counter() - start
    size_kb = folder_kb(store.folder)
    naive = LabelStore.create(root / f"n{side}", shape=(side, side), downsamples=ds)
    rows = []
    for obj in (500, 4000):
        mask = disc(obj)
        adds, naives, undos = [], [], []
        for i in range(repeat):
            x0 = 1000 + i * (obj + 1500) % max(side - obj - 2000, 1)
            window = (x0, 1000, x0 + obj, 1000 + obj)
            t = time.perf_counter()
            store.add_object(mask, window, class_name="bench")
            adds.append(time.perf_counter() - t)
            t = time.perf_counter()
            naive_add(naive, mask, window, i + 1)
            naives.append(time.perf_counter() - t)
        t = time.perf_counter()
        reopened = LabelStore.open(store.folder)
        reopen_s = time.perf_counter() - t
        for _ in range(repeat):
            t = time.perf_counter()
            reopened.undo()
            undos.append(time.perf_counter() - t)
        store = reopened
        add_s, naive_s = statistics.median(adds), statistics.median(naives)
        rows.append({"slide": f"{side:,}² ({len(ds)} lv)", "create_s": create_s,
                     "folder_kb": size_kb, "object": f"{obj}²", "add_s": add_s,
                     "naive_s": naive_s, "ratio": add_s / naive_s,
                     "undo_s": statistics.median(undos), "reopen_s": reopen_s})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="objects per size (median)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in (10_000, 100_000):
            rows += bench_side(Path(tmp), side, repeat=args.repeat)
    header = (f"{'slide':<18}{'create s':>10}{'folder KB':>11}{'object':>8}{'add s':>8}"
              f"{'naive s':>9}{'ratio':>7}{'undo s':>8}{'reopen s':>10}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['slide']:<18}{r['create_s']:>10.3f}{r['folder_kb']:>11.1f}"
                     f"{r['object']:>8}{r['add_s']:>8.3f}{r['naive_s']:>9.3f}"
                     f"{r['ratio']:>7.2f}{r['undo_s']:>8.3f}{r['reopen_s']:>10.3f}")
    lines.append(f"\nzarr {zarr.__version__}, chunks 1024², uint32, median of {args.repeat}; "
                 f"ratio = add / naive (< 1: faster than the naive write)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
