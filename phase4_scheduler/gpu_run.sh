#!/usr/bin/env bash
# Phase 4's GPU measurements. Writes JSON + plots to $OUT; copy them into phase4_scheduler/results/ (the lengths
# file for 'equal' is .cache/sharegpt_lengths_smollm2_1000_1024_2048_4.json: carry it into $TITAN_CACHE). Run the vLLM peer
# (../shared/peers/vllm: bench_offline.py, serve_on_device.sh) on the same machine for the side-by-side ratios.
#   bash phase4_scheduler/gpu_run.sh [offline] [fp8] [static] [equal] [serve]
set -uo pipefail
command -v nvidia-smi >/dev/null || { echo "gpu_run.sh runs on the GPU machine (no nvidia-smi here); on a CPU: make phase4, and the CPU benches in phase4_scheduler/README.md" >&2; exit 1; }
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TITAN_RESULTS_DIR=${OUT:-/tmp/out} TITAN_CACHE=/tmp/titan_cache
mkdir -p "$TITAN_RESULTS_DIR"
parts=${*:-offline static equal serve}
has() { [[ " $parts " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
# B=1 decode and 1024 x (128 in, 128 out), TinyLlama-1.1B shapes, random bf16 weights (the targets)
has offline && python3 -m phase4_scheduler.bench_offline --device cuda --model tinyllama-1.1b --random-weights \
    --num-prompts 1024 --input-len 128 --output-len 128 --max-num-seqs 256 --name offline_gpu
has offline && python3 -m phase4_scheduler.bench_offline --device cuda --model tinyllama-1.1b --random-weights \
    --num-prompts 1 --input-len 128 --output-len 256 --max-num-seqs 1 --name b1_gpu
# the same job over the FP8 KV pool (phase 3's format), with its GPU test first
has fp8 && python3 -m pytest -q -m gpu phase4_scheduler/tests/test_kv_fp8.py
has fp8 && python3 -m phase4_scheduler.bench_offline --device cuda --model tinyllama-1.1b --random-weights --fuse \
    --num-prompts 1024 --input-len 128 --output-len 128 --max-num-seqs 1024 --max-num-batched-tokens 32768 \
    --kv-memory 0.3 --kv-cache-dtype fp8 --latency --name offline_gpu_1024_fp8
# continuous vs static on ShareGPT lengths
has static && python3 -m phase4_scheduler.bench_offline --device cuda --model tinyllama-1.1b --random-weights \
    --workload sharegpt --num-prompts 1000 --compare-static --max-num-seqs 256 --name sharegpt_static_vs_continuous_gpu
# continuous vs static (and padded static) at equal p50 latency: Poisson ShareGPT arrivals, a rate sweep (~4 min)
has equal && python3 -m phase4_scheduler.bench_equal_latency --device cuda --model tinyllama-1.1b --random-weights \
    --fuse --max-num-seqs 256 --max-num-batched-tokens 8192 --kv-memory 0.3 --rates 16 32 64 96 128 160 192 256 320 384 \
    --duration 5 --max-requests 2000 --refine 2 --lengths-file "$TITAN_CACHE/sharegpt_lengths_smollm2_1000_1024_2048_4.json" \
    --name equal_latency_gpu
# serving: ShareGPT, Poisson 16 req/s. Needs ShareGPT and SmolLM2's tokenizer there: carry a ShareGPT slice and
# .cache/tokenizers (the 98 MB GGUF itself does not fit a call), and point TITAN_CACHE at them
has serve && python3 -m phase4_scheduler.bench_serve --launch --model smollm2-135m --random-weights --device cuda \
    --num-prompts 1000 --request-rate 16 --name serve_rate16_gpu
