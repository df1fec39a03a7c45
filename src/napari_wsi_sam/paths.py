"""Where the package keeps what it downloads: one cache folder, chosen by the user or the OS."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

HOME_ENV = "NAPARI_WSI_SAM_HOME"


def cache_home() -> Path:
    """The cache folder: ``$NAPARI_WSI_SAM_HOME``, else the per-user cache directory."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_cache_dir("napari-wsi-sam"))
