#!/usr/bin/env bash
# Everything phase 0 measures on the GPU, in one device call. Results land in $OUT (TITAN_RESULTS_DIR); copy them
# into phase0_tinyllama/results/ afterwards.  Usage on the GPU machine:  bash phase0_tinyllama/gpu_run.sh [parts]
# parts: kernels ncu decode kvcache profile tests (default: all)
set -uo pipefail
command -v nvidia-smi >/dev/null || { echo "gpu_run.sh runs on the GPU machine (no nvidia-smi here); on a CPU: make phase0 (GPU criteria skipped, quoting results/)" >&2; exit 1; }
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TITAN_RESULTS_DIR=${OUT:-/tmp/out} TITAN_CACHE=/tmp/titan_cache
mkdir -p "$TITAN_RESULTS_DIR"
parts=${*:-kernels ncu decode kvcache profile tests}
has() { [[ " $parts " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv
has kernels && { python3 -m phase0_tinyllama.bench_kernels || echo "bench_kernels FAILED"; }
has ncu && { ncu --clock-control none --csv --page details -k regex:matmul_tiled -c 1 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
    python3 -m phase0_tinyllama.profile_ncu target > /tmp/ncu_tiled.csv 2>/tmp/ncu.err \
  && python3 -m phase0_tinyllama.profile_ncu parse /tmp/ncu_tiled.csv || { echo "ncu FAILED"; tail -5 /tmp/ncu.err; }; }
has profile && { python3 -m phase0_tinyllama.profile_decode || echo "profile_decode FAILED"; }
has decode && { python3 -m phase0_tinyllama.bench_decode --batch 1 64 || echo "bench_decode FAILED"; }
has kvcache && { python3 -m phase0_tinyllama.bench_kvcache --device cuda --model tinyllama-1.1b --random-weights \
    --prompt-len 128 --batch 1 64 --name kvcache_gpu || echo "bench_kvcache FAILED"; }
has tests && python3 -m pytest -q -m gpu -p no:cacheprovider common phase0_tinyllama 2>&1 | tail -3
