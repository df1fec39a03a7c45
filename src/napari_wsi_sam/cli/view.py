"""``napari-wsi-sam view``: open napari with a slide and the WSI-SAM dock widget docked."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import args as argtypes


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("view", help="open a slide in napari with the WSI-SAM widget")
    parser.add_argument("slide", type=Path, help="slide file or folder (.svs, .tif, .ndpi, .mrxs, "
                        ".dcm, .ome.zarr, ...)")
    parser.add_argument("--mpp", type=argtypes.slide_mpp, default=None,
                        help="µm per pixel, for a slide that does not record it")
    argtypes.add_backend_argument(parser)
    parser.add_argument("--screenshot", type=Path, default=None,
                        help="save a screenshot of the window to this PNG and close")
    parser.set_defaults(func=_view)


def _view(args: argparse.Namespace) -> int:
    # Open the slide first: a broken file is reported before any window appears.
    from ..slide import open_slide

    slide = open_slide(args.slide, mpp=args.mpp, backend=args.backend)

    import napari

    import napari_wsi_sam.ui  # noqa: F401  (keeps triton out of this napari process)

    from ..ui.slide_layer import slide_layer_data

    viewer = napari.Viewer(title=f"WSI-SAM · {slide.path.name}")
    data, kwargs, _ = slide_layer_data(slide)
    viewer.add_image(data, **kwargs)
    viewer.window.add_plugin_dock_widget("napari-wsi-sam", "WSI-SAM")
    if args.screenshot is None:
        napari.run()
        return 0
    from qtpy.QtWidgets import QApplication

    for _ in range(20):
        QApplication.processEvents()
    args.screenshot.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.screenshot), canvas_only=False)
    viewer.close()
    return 0
