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

import napari_wsi_sam.ui  # noqa: F401  (keeps triton out of this napari process)
from napari_wsi_sam.assets import SAMPLE_SLIDE, fetch
from napari_wsi_sam.ui.coords import box_to_world_corners
from napari_wsi_sam.ui.layers import PROMPTS_LAYER

OUT = Path(__file__).parent / "images"
FOLLICLE = (1185.0, 1980.0, 1345.0, 2185.0)
REGION = (1040.0, 1850.0, 1540.0, 2350.0)
"""A hand-drawn tumour region around the follicle and its neighbours (a stored object)."""
COARSE = [(1000.0, 1890.0, 1070.0, 1965.0), (1375.0, 1995.0, 1445.0, 2065.0),
          (1095.0, 2245.0, 1175.0, 2325.0), (1295.0, 2245.0, 1365.0, 2315.0),
          (1480.0, 2180.0, 1560.0, 2260.0)]


def settle(widget, seconds: float = 600.0) -> None:
    deadline = time.time() + seconds
    while True:
        for _ in range(10):
            QApplication.processEvents()
            time.sleep(0.02)
        if widget.annotator is None or not widget.annotator.busy or time.time() > deadline:
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

        # A hand-drawn region over all of them: overlapping objects all stay (drawn with the
        # batch's first redraw).
        widget.session.store.add(shapely_box(*REGION), class_name="tumour")
        coarse = viewer.add_shapes([box_to_world_corners(np.array(b), scale=layer.scale)
                                    / layer.scale for b in COARSE], shape_type="rectangle",
                                   scale=layer.scale, name="coarse (e.g. from QuPath)",
                                   edge_color="#00e5ff", face_color="transparent",
                                   edge_width=4)
        widget.class_name.value = "stroma"
        widget.batch_refine(coarse)
        settle(widget)
        viewer.camera.center = (0.0, 2100 * layer.scale[0], 1280 * layer.scale[1])
        viewer.camera.zoom = 1.1
        settle(widget, 2)
        viewer.screenshot(str(OUT / "usage_batch.png"), canvas_only=False)
        print(widget.status)
        viewer.close()


if __name__ == "__main__":
    main()
