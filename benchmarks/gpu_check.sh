#!/usr/bin/env bash
# Run the model benchmark on a CUDA machine (from the repository root, in the project's venv).
set -euo pipefail
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'"
python benchmarks/bench_model.py --device cuda --repeats 5 "$@"
