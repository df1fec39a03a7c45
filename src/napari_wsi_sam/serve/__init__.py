"""``napari-wsi-sam serve``: samapi's HTTP protocol, so QuPath's SAM extension runs WSI-SAM and
its objects land in the same object store napari shows (docs/qupath.md)."""

from .app import ServeConfig, create_app
from .security import ServeLimits, check_bind

__all__ = ["ServeConfig", "ServeLimits", "check_bind", "create_app"]
