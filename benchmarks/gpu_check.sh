#!/usr/bin/env bash
# The GPU checks of issue 18 in one go, for a machine with CUDA (about 5-8 minutes):
# the CUDA tests, then bench_scaling.py and bench_run.py on the GPU. Writes their output
# (and the scaling CSV and plot) under $OUT (default reports/gpu).
#
#   benchmarks/gpu_check.sh            # PYTHON defaults to .venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-reports/gpu}
mkdir -p "$OUT"
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check: no CUDA device (torch.cuda.is_available() is False)")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PYTHON" -m pytest -q tests/test_cuda.py tests/test_padded.py 2>&1 | tee "$OUT/tests.txt"
"$PYTHON" benchmarks/bench_scaling.py --device cuda --threads 0 --out "$OUT" 2>&1 | tee "$OUT/scaling.txt"
"$PYTHON" benchmarks/bench_run.py --device cuda --repeats 3 --no-baseline 2>&1 | tee "$OUT/run.txt"
