"""``python -m napari_wsi_sam.cli``: the same as the ``napari-wsi-sam`` command."""

import sys

from . import main

sys.exit(main())
