"""napari-wsi-sam: annotate whole-slide images with WSI-SAM in napari."""

__version__ = "0.1.0"
