#!/usr/bin/env bash
# Set everything up (see setup.sh), then run the whole test suite; napari tests run under Xvfb
# through pytest-xvfb. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh testing
exec .venv/bin/python -m pytest "$@"
