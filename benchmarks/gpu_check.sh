#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) with the machine's own python3, or PYTHON:
#
#   benchmarks/gpu_check.sh OUT_DIR [--device cuda] [...]     # on the lent GPU machine, .whl carried
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" "$@"
