#!/usr/bin/env bash
# Import the phase-1 abi3 wheel on the GPU machine (Python 3.12) and check it against the Python reference.
# Run from the repository root there, with phase1_rust_allocator/target/wheels carried (it is git-ignored):
#   TITAN_RESULTS_DIR=$OUT PYTHONUNBUFFERED=1 bash phase1_rust_allocator/check_wheel_on_gpu.sh
# It installs the wheel into $KVCM_SITE (default /tmp/kvcm_site; put that on PYTHONPATH to use it from the engine)
# and writes wheel_check_gpu.json to $TITAN_RESULTS_DIR (else phase1_rust_allocator/results/).
set -euo pipefail
command -v nvidia-smi >/dev/null || { echo "check_wheel_on_gpu.sh runs on the GPU machine (no nvidia-smi here); on a CPU: make phase1 (cargo test, the wheel against the reference)" >&2; exit 1; }
WHEEL=$(ls phase1_rust_allocator/target/wheels/kv_cache_manager-*-abi3-*.whl 2>/dev/null | head -1 || true)
[ -n "$WHEEL" ] || { echo "no abi3 wheel under phase1_rust_allocator/target/wheels: build it with bash tools/build_rust.sh and carry that folder" >&2; exit 1; }
SITE=${KVCM_SITE:-/tmp/kvcm_site}
PY=${PYTHON:-python3}
$PY --version
$PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEEL"
PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" $PY -m phase1_rust_allocator.check_wheel
