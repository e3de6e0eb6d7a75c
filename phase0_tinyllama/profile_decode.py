"""Where does a decode step's time go? CPU-side dispatch vs GPU-busy time, per operator, and a few variants.

    python -m phase0_tinyllama.profile_decode      # on the GPU machine; writes results/profile_decode_gpu.json

Variants of the phase-0 engine's decode step (TinyLlama-1.1B shapes, random bf16 weights, B=1), each over
sequence lengths it has not seen before in the process (a new prompt length per variant):
- SDPA allowed to use cuDNN attention (which builds a plan per new shape), then the same lengths again;
- SDPA without cuDNN (the engine's setting), under no_grad and under inference_mode;
plus a profiler table of CPU and GPU time per operator.
"""
from __future__ import annotations

import time

import torch
from torch.nn.attention import SDPBackend
from torch.profiler import ProfilerActivity, profile

from common import attention
from common.bench import write_result
from common.model_loader import load_model
from common.sampling import SamplingParams
from phase0_tinyllama.inference_v1 import stream_kv_cache

STEPS = 40


def engine_ms_per_step(model, prompt_len: int, grad_mode=torch.no_grad) -> float:
    ids = torch.randint(100, 31000, (1, prompt_len), device="cuda")
    with grad_mode():  # the undecorated generator, so that grad_mode is the one in force
        it = stream_kv_cache.__wrapped__(model, ids, SamplingParams(max_tokens=STEPS + 1, temperature=0.0, ignore_eos=True))
        next(it)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in it:
            pass
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / STEPS * 1e3


def main() -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("profile_decode needs a CUDA GPU (it profiles the GPU decode step); the CPU KV-cache figures "
                         "come from `python -m phase0_tinyllama.bench_kvcache`")
    lm = load_model("tinyllama-1.1b", device="cuda", dtype="bf16", random_weights=True)
    m = lm.model
    engine_ms_per_step(m, 64)  # warm-up: kernels, allocator, cuBLAS handles
    default = list(attention.SDPA_BACKENDS)
    out = {}
    attention.SDPA_BACKENDS = default + [SDPBackend.CUDNN_ATTENTION]
    out["ms_sdpa_with_cudnn_new_lengths"] = engine_ms_per_step(m, 128)
    out["ms_sdpa_with_cudnn_seen_lengths"] = engine_ms_per_step(m, 128)
    attention.SDPA_BACKENDS = default
    out["ms_sdpa_without_cudnn_no_grad"] = engine_ms_per_step(m, 256)
    out["ms_sdpa_without_cudnn_inference_mode"] = engine_ms_per_step(m, 384, torch.inference_mode)
    out["ms_sdpa_without_cudnn_no_grad_again"] = engine_ms_per_step(m, 448)  # order check
    print(out)
    ids = torch.randint(100, 31000, (1, 512), device="cuda")
    it = stream_kv_cache(m, ids, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    next(it)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in it:
            pass
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:20]
    out["top_self_cpu"] = [{"name": e.key, "count": e.count // 5, "self_cpu_us_per_step": e.self_cpu_time_total / 5,
                            "device_us_per_step": e.device_time_total / 5} for e in rows]
    for r in out["top_self_cpu"][:10]:
        print(f"{r['name'][:60]:<60} x{r['count']:<5} cpu {r['self_cpu_us_per_step']:9.0f} us  "
              f"gpu {r['device_us_per_step']:8.0f} us")
    write_result("phase0_tinyllama", "profile_decode_gpu", out)
    return out


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    from common.cli import run_script

    run_script(main, "profile_decode")
