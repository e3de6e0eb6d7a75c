"""Where does a decode step's time go? CPU-side dispatch vs GPU-busy time, per operator, and a few variants.

    python -m phase0_tinyllama.profile_decode      # on the GPU machine; writes results/profile_decode_gpu.json

Variants of the phase-0 engine's decode step (TinyLlama-1.1B shapes, random bf16 weights, B=1):
inference_mode vs no_grad, and the GPU-busy time per step, so the report can say how far the eager engine is from
being GPU-bound and why.
"""
from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

from common.bench import write_result
from common.kv_cache import ContiguousKVCache
from common.model_loader import load_model


def step_loop(model, cfg, steps: int, grad_mode) -> float:
    ids = torch.randint(100, 31000, (1, 128), device="cuda")
    cache = ContiguousKVCache(cfg, 1, 128 + steps + 1, dtype=torch.bfloat16, device="cuda")
    with grad_mode():
        logits = model(ids, cache=cache, last_only=True)
        tok = logits[:, -1].argmax(-1)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            tok = model(tok[:, None], cache=cache)[:, -1].argmax(-1)
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> dict:
    lm = load_model("tinyllama-1.1b", device="cuda", dtype="bf16", random_weights=True)
    m, cfg = lm.model, lm.config
    out = {}
    for name, mode in (("inference_mode", torch.inference_mode), ("no_grad", torch.no_grad)):
        step_loop(m, cfg, 5, mode)
        out[f"ms_per_step_{name}"] = step_loop(m, cfg, 50, mode)
    print(out)
    ids = torch.randint(100, 31000, (1, 128), device="cuda")
    cache = ContiguousKVCache(cfg, 1, 200, dtype=torch.bfloat16, device="cuda")
    with torch.inference_mode():
        tok = m(ids, cache=cache, last_only=True)[:, -1].argmax(-1)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                tok = m(tok[:, None], cache=cache)[:, -1].argmax(-1)
            torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:20]
    out["top_self_cpu"] = [{"name": e.key, "count": e.count // 5, "self_cpu_us_per_step": e.self_cpu_time_total / 5,
                            "device_us_per_step": e.device_time_total / 5} for e in rows]
    for r in out["top_self_cpu"][:12]:
        print(f"{r['name'][:60]:<60} x{r['count']:<5} cpu {r['self_cpu_us_per_step']:9.0f} us  "
              f"gpu {r['device_us_per_step']:8.0f} us")
    write_result("phase0_tinyllama", "profile_decode_gpu", out)
    return out


if __name__ == "__main__":
    main()
