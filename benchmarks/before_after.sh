#!/usr/bin/env bash
# Issue 35's figures before and after, in one session: the CNN's forward pass against the reference
# convolution, whole runs of every parent kind, a run's products and floors, the 70-run LeNet-5 grid.
#
#   benchmarks/before_after.sh [BEFORE] [RESNET_BEFORE]     # defaults: 8594009 f707a9e
#
# Every script it calls measures its baseline in the same invocation and prints the machine's
# reference rates (benchmarks/rates.py) beside its figures. About 75 minutes on a 2-core machine
# (the ResNet baseline alone 13); the grid at BEFORE is not run (40 minutes more:
# `python benchmarks/bench_grid.py --rev BEFORE parent=cnn`).
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=${1:-8594009}
RESNET_BEFORE=${2:-f707a9e}
PY=${PYTHON:-.venv/bin/python}
log() { echo "=== $(date +%H:%M:%S) $*"; }
log rates; $PY benchmarks/rates.py --compare
log bench_conv; $PY benchmarks/bench_conv.py --baseline "$BEFORE" --repeats 7
log bench_runs; $PY benchmarks/bench_runs.py --baseline "$BEFORE" --cases mlp,cnn,tiny,tiny-tracked --rounds 3
log bench_run cnn; $PY benchmarks/bench_run.py --repeats 1 --no-warmup --no-baseline --products parent=cnn tracking.enabled=false
log bench_run mlp; $PY benchmarks/bench_run.py --repeats 1 --no-warmup --no-baseline parent=mlp tracking.enabled=false
log bench_run resnet; $PY benchmarks/bench_run.py --short --repeats 1 --no-warmup --no-baseline --products parent=resnet tracking.enabled=false
log bench_runs resnet; $PY benchmarks/bench_runs.py --baseline "$RESNET_BEFORE" --cases resnet --rounds 1 --no-warmup
log grid; $PY benchmarks/bench_grid.py parent=cnn
log done
