"""Exporting a label store to GeoJSON: the widget's Export button, end to end.

Run: ``.venv/bin/python benchmarks/bench_store_export.py [--n 10000]``

Real nuclei (histolytics' hgsc_nest instance mask, 1,294 per 1500 px tile) are added to a
label store of a virtual 60,000 x 60,000 slide, tile after tile, until it holds ``--n``
objects (journal without fsync, to keep the set-up short). Then `pipeline.objects.export_geojson`
reads every object's mask back from the store, traces it and writes the file. The baseline, in
the same run, is the GeoJSON step alone (`write_geojson` of already traced polygons), so the
ratio shows what reading the masks back from the store costs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_wsi_sam.annotations import LabelStore, read_geojson, write_geojson
from napari_wsi_sam.assets import fetch
from napari_wsi_sam.pipeline.objects import export_geojson, store_to_objects

TILE = 1500
SIDE = 60_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    labels = np.load(fetch("hgsc_nest_inst_mask.npz")["hgsc_nest_inst_mask.npz"])["nuc_raster"]
    nuclei = [(labels[sl] == i + 1, sl) for i, sl in enumerate(ndimage.find_objects(labels))
              if sl is not None]
    with tempfile.TemporaryDirectory() as tmp:
        store = LabelStore.create(Path(tmp) / "store", shape=(SIDE, SIDE),
                                  downsamples=[1.0, 4.0, 16.0, 64.0], mpp=(0.5, 0.5),
                                  durable=False)
        started = time.perf_counter()
        added = 0
        tiles_per_row = SIDE // TILE
        while added < args.n:
            tile = added // len(nuclei)
            ox, oy = (tile % tiles_per_row) * TILE, (tile // tiles_per_row) * TILE
            mask, sl = nuclei[added % len(nuclei)]
            window = (ox + sl[1].start, oy + sl[0].start, ox + sl[1].stop, oy + sl[0].stop)
            store.add_object(mask, window, class_name="nucleus", color="#ff00ff", model="sam")
            added += 1
        fill = time.perf_counter() - started

        out = Path(tmp) / "objects.geojson"
        started = time.perf_counter()
        written = export_geojson(store, out, mpp=(0.5, 0.5))
        export = time.perf_counter() - started

        objects = store_to_objects(store)
        started = time.perf_counter()
        write_geojson(objects, Path(tmp) / "baseline.geojson", mpp=(0.5, 0.5))
        baseline = time.perf_counter() - started
        read_back = len(read_geojson(out).objects)

    print(f"{args.n} real nuclei in a {SIDE:,}² store (4 levels); filling it took {fill:.1f} s")
    print(f"{'step':44s} {'objects':>8s} {'seconds':>8s} {'ratio':>6s}")
    print(f"{'export_geojson (store -> masks -> file)':44s} {written:8d} {export:8.2f} "
          f"{export / baseline:6.1f}")
    print(f"{'baseline: write_geojson of traced polygons':44s} {len(objects):8d} "
          f"{baseline:8.2f} {1.0:6.1f}")
    print(f"read back: {read_back} objects")


if __name__ == "__main__":
    main()
