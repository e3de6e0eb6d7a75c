#!/usr/bin/env bash
# Issue 6's offline target in ONE device call (~2-4 min on an H100): engine correctness on the GPU first, then the
# host-overhead bench on that machine's CPU, then 1024 x (128 in, 128 out) TinyLlama-1.1B-shaped random bf16 weights
# (continuous batching, static baseline, B=1 latency, HF eager B=1/B=64). JSON lands in $OUT; copy it into
# phase4_scheduler/results/. Parts: check overhead offline fused (default: check overhead offline).
#   PYTHONPATH=$PWD bash phase4_scheduler/gpu_offline.sh [check] [overhead] [offline] [fused]
set -uo pipefail
command -v nvidia-smi >/dev/null || { echo "gpu_offline.sh runs on the GPU machine (no nvidia-smi here); on a CPU: make phase4, and the CPU benches in phase4_scheduler/README.md" >&2; exit 1; }
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TITAN_RESULTS_DIR=${OUT:-/tmp/out} TITAN_CACHE=${TITAN_CACHE:-/tmp/titan_cache}
mkdir -p "$TITAN_RESULTS_DIR"
parts=${*:-check overhead offline}
has() { [[ " $parts " == *" $1 "* ]]; }
declare -A status
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
ISSUE=(--device cuda --model tinyllama-1.1b --random-weights --num-prompts 1024 --input-len 128 --output-len 128
       --max-num-seqs 1024 --max-num-batched-tokens 16384 --kv-memory 0.3)
if has check; then
  timeout 300 python3 -m phase4_scheduler.gpu_check_engine 2>&1 | tee "$TITAN_RESULTS_DIR/gpu_check_engine.log"
  status[check]=${PIPESTATUS[0]}
fi
if has overhead; then  # the stubbed-forward step cost on this host's CPU (no GPU involved)
  timeout 240 python3 -m phase4_scheduler.bench_step_overhead --label gpu-host --name step_overhead_gpu_host \
      --compare none 2>&1 | grep -v "it/s]"
  status[overhead]=${PIPESTATUS[0]}
fi
if has offline; then
  timeout 420 python3 -m phase4_scheduler.bench_offline "${ISSUE[@]}" --latency --compare-static --hf \
      --name offline_gpu_1024 2>&1 | grep -v "it/s]"
  status[offline]=${PIPESTATUS[0]}
fi
if has fused; then  # the same job on the runner's fused kernels (no HF/static: just the engine)
  timeout 300 python3 -m phase4_scheduler.bench_offline "${ISSUE[@]}" --fuse --latency --name offline_gpu_1024_fused \
      2>&1 | grep -v "it/s]"
  status[fused]=${PIPESTATUS[0]}
fi
echo "==== summary (exit codes: $(for k in "${!status[@]}"; do printf '%s=%s ' "$k" "${status[$k]}"; done))"
grep -h "^\[FAIL\]\|engine check" "$TITAN_RESULTS_DIR/gpu_check_engine.log" 2>/dev/null
python3 - <<'PY'
import json, os, pathlib
d = pathlib.Path(os.environ["TITAN_RESULTS_DIR"])
for name in ("offline_gpu_1024", "offline_gpu_1024_fused"):
    p = d / f"{name}.json"
    if p.exists():
        j = json.loads(p.read_text())
        print(name, {k: round(v, 2) for k, v in j["summary"].items()}, "errors:", j["errors"] or "none")
p = d / "step_overhead_gpu_host.json"
if p.exists():
    for r in json.loads(p.read_text())["rows"]:
        print(f"host overhead B={r['batch']} tok={r['tokenizer']}: {r['host_ms']:.2f} ms/step streaming, "
              f"{r.get('final_only_host_ms', float('nan')):.2f} ms final-only (LLM.generate)")
PY
