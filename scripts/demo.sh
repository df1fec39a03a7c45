#!/usr/bin/env bash
# Set everything up (see setup.sh), then run the main job on the bundled real sample slide:
# with a display, napari opens with the slide and the WSI-SAM dock widget; without one (or with
# --headless), the same slide goes through the pipeline and its outputs land in outputs/demo/,
# including a screenshot of the napari window rendered under Xvfb.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh qt
slide="$(.venv/bin/python -c 'from napari_wsi_sam.assets import SAMPLE_SLIDE, fetch; print(fetch(SAMPLE_SLIDE)[SAMPLE_SLIDE])')"

if [ -n "${DISPLAY:-}" ] && [ "${1:-}" != "--headless" ]; then
  exec .venv/bin/napari-wsi-sam view "$slide"
fi

out="outputs/demo"
.venv/bin/napari-wsi-sam demo "$slide" --out "$out"
if command -v xvfb-run >/dev/null; then
  xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/napari-wsi-sam view "$slide" --screenshot "$out/napari.png"
  echo "demo: napari screenshot in $out/napari.png"
else
  echo "demo: xvfb-run is missing, so no napari screenshot (install the package xvfb)" >&2
fi
