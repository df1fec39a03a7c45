#!/usr/bin/env bash
# Train the shipped head's recipe on a CUDA machine and time it (from the repository root, in
# the project's venv): bench_train on the GPU, then the full training command, whose head can
# be evaluated like the CPU one (docs/results.md). Numbers go to docs/performance.md#training.
set -euo pipefail
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'"
python benchmarks/bench_train.py --device cuda --views 4 --steps 11
out="${1:-outputs/gpu-train}"
start=$(date +%s)
napari-wsi-sam train --data builtin:hgsc_nest --device cuda --out "$out" --no-progress
echo "full training on $(python -c 'import torch; print(torch.cuda.get_device_name())'):" \
     "$(( $(date +%s) - start )) s"
