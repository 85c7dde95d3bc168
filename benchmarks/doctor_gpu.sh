#!/usr/bin/env bash
# The GPU verification kit, for a lent CUDA device: torchrepro doctor's full report (text and
# JSON) and the CUDA tests, each under a hard time limit, written to $OUT (default: here).
#
#     OUT=/tmp/out bash benchmarks/doctor_gpu.sh
set -uo pipefail
OUT=${OUT:-.}
PY=${PY:-python}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
timeout 330 "$PY" -m torchrepro doctor --device cuda --time-limit 300 --json "$OUT/doctor.json" \
    > "$OUT/doctor.txt" 2> "$OUT/doctor.err"
echo "doctor exit $?" >> "$OUT/doctor.err"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -k "cuda or gpu" tests \
    > "$OUT/cuda_tests.txt" 2>&1
echo "cuda tests exit $?" >> "$OUT/cuda_tests.txt"
