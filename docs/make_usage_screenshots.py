"""Screenshots for docs/usage.md, made from the real widget on the real sample slide.

Run under a display or Xvfb: ``xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python
docs/make_usage_screenshots.py``. It works on a copy of the sample slide in a temporary
folder, so no annotation is left behind.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication
from shapely.geometry import box as shapely_box

from napari_wsi_sam._annotation_layers import PROMPTS_LAYER
from napari_wsi_sam._coords import box_to_world_corners
from napari_wsi_sam._widget_io import batch_refine, import_geojson
from napari_wsi_sam.annotations import AnnotationObject, write_geojson
from napari_wsi_sam.assets import SAMPLE_SLIDE, fetch

OUT = Path(__file__).parent / "images"
FOLLICLE = (1185.0, 1980.0, 1345.0, 2185.0)
COARSE = [(1000.0, 1890.0, 1070.0, 1965.0), (1375.0, 1995.0, 1445.0, 2065.0),
          (1095.0, 2245.0, 1175.0, 2325.0), (1295.0, 2245.0, 1365.0, 2315.0),
          (1480.0, 2180.0, 1560.0, 2260.0)]


def settle(widget, seconds: float = 600.0) -> None:
    deadline = time.time() + seconds
    while True:
        for _ in range(10):
            QApplication.processEvents()
            time.sleep(0.02)
        if widget._worker is None or time.time() > deadline:
            return


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        slide = Path(tmp) / SAMPLE_SLIDE
        shutil.copy(fetch(SAMPLE_SLIDE)[SAMPLE_SLIDE], slide)
        viewer = napari.Viewer(title="WSI-SAM")
        viewer.window.resize(1500, 950)
        viewer.open(str(slide), plugin="napari-wsi-sam")
        _, widget = viewer.window.add_plugin_dock_widget("napari-wsi-sam", "WSI-SAM")
        settle(widget)
        viewer.screenshot(str(OUT / "usage_widget.png"), canvas_only=False)

        layer = viewer.layers[0]
        prompts = viewer.layers[PROMPTS_LAYER]
        prompts.add_rectangles([box_to_world_corners(np.array(FOLLICLE), scale=layer.scale)
                                / prompts.scale])
        time.sleep(0.1)
        settle(widget)
        viewer.camera.center = (0.0, 2080 * layer.scale[0], 1265 * layer.scale[1])
        viewer.camera.zoom = 1.6
        settle(widget, 2)
        viewer.screenshot(str(OUT / "usage_box_mask.png"), canvas_only=False)

        coarse = Path(tmp) / "coarse.geojson"
        write_geojson([AnnotationObject(id=i + 1, geometry=shapely_box(*b), class_name="stroma")
                       for i, b in enumerate(COARSE)], coarse)
        imported = import_geojson(widget, coarse)
        batch_refine(widget, imported)
        settle(widget)
        viewer.camera.center = (0.0, 2100 * layer.scale[0], 1280 * layer.scale[1])
        viewer.camera.zoom = 1.1
        settle(widget, 2)
        viewer.screenshot(str(OUT / "usage_batch.png"), canvas_only=False)
        print(widget._status.value)
        viewer.close()


if __name__ == "__main__":
    main()
