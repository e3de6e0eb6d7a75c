#!/usr/bin/env bash
# Prepare .carry/ (git-ignored, ~2 MB) for a device session: what tools/device_session.sh needs on the GPU machine
# that the working tree does not hold. Run HERE (the CPU box), after make setup:
#   bash tools/device_carry.sh
# then on the device:  run(command="bash tools/device_session.sh verify b1 offline 2>&1 | tail -80", carry=[".carry"])
#  - ShareGPT request lengths under SmolLM2's tokenizer (the equal-latency sweeps' workload; the 125 MB dataset and
#    the 98 MB GGUF do not fit a call, the 20 KB lengths file does)
#  - the phase-1 abi3 wheel (kv_cache_manager), built if missing
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "device_carry: no .venv; run make setup first" >&2; exit 1; }
mkdir -p .carry
PYTHONPATH=$PWD "$PY" - <<'EOF'
from common.data import sharegpt_request_lengths
from common.assets import cache_dir
import shutil
sharegpt_request_lengths(1000)  # cached under .cache/ by this call
src = cache_dir() / "sharegpt_lengths_smollm2_1000_1024_2048_4.json"
shutil.copy(src, ".carry/" + src.name)
print("device_carry:", src.name)
EOF
WHEEL=$(ls phase1_rust_allocator/target/wheels/kv_cache_manager-*-abi3-*.whl 2>/dev/null | head -1 || true)
if [ -z "$WHEEL" ]; then
  bash tools/build_rust.sh >/dev/null
  WHEEL=$(ls phase1_rust_allocator/target/wheels/kv_cache_manager-*-abi3-*.whl | head -1)
fi
# provenance: the device's copy has no .git (uncommitted changes travel too: then the commit is marked +dirty)
echo "$(git rev-parse --short HEAD)$( [ -n "$(git status --porcelain --untracked-files=no)" ] && echo +dirty)" > .carry/COMMIT
rm -f .carry/kv_cache_manager-*.whl
cp "$WHEEL" .carry/
# FlashMLA, the MLA decode peer (device part mlapeer): vLLM's compiled extension (1.7 MB) out of the vLLM peer's parts,
# where ../shared/peers/vllm/prepare.sh has filled .peer/ (not committed: loaded at run time on the device)
if [ -e .peer/vllm.part00 ] && [ ! -f .carry/flashmla/_flashmla_C.abi3.so ]; then
  mkdir -p .carry/flashmla
  cat .peer/vllm.part0* | xz -d | tar x -O ./vllm/_flashmla_C.abi3.so > .carry/flashmla/_flashmla_C.abi3.so \
    || { echo "device_carry: could not extract FlashMLA from .peer/" >&2; rm -rf .carry/flashmla; }
fi
du -sh .carry
ls .carry
