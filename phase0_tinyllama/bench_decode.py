"""GPU decode baseline: the phase-0 engine (inference_v1, KV cache, eager PyTorch) against HF transformers eager,
TinyLlama-1.1B shapes with random bf16 weights, in the same run.

    python -m phase0_tinyllama.bench_decode --batch 1 64      # on the GPU machine; writes results/decode_gpu.json

Reports ms per decode step, tokens/s, and the percent of the bandwidth roofline (0.73 ms/token at B=1: 2.2 GB of
weights / 3.0 TB/s measured copy bandwidth, ANCHORS.md), plus a torch.profiler summary of where a step's time goes.
"""
from __future__ import annotations

import argparse
import time

import torch

from common.bench import gpu_memory, model_bytes, write_result
from common.model_loader import load_model
from common.sampling import SamplingParams
from phase0_tinyllama.inference_v1 import stream_kv_cache
from phase0_tinyllama.roofline import decode_step_cost

ROOFLINE_MS_B1 = 0.73  # ANCHORS.md: TinyLlama-1.1B bf16, 2.2 GB per token / 3.0 TB/s


def time_ours(model, ids: torch.Tensor, n: int) -> dict:
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    torch.cuda.synchronize()
    marks = []
    for _ in stream_kv_cache(model, ids, params):
        torch.cuda.synchronize()
        marks.append(time.perf_counter())
    decode = (marks[-1] - marks[0]) / (n - 1)  # first mark = prefill + first token
    return {"ms_per_step": decode * 1e3, "tokens_per_s": ids.shape[0] / decode}


def time_hf(hf, ids: torch.Tensor, n: int) -> dict:
    from transformers import GenerationConfig

    hf.generation_config.eos_token_id = None

    def run(k):
        cfg = GenerationConfig(max_new_tokens=k, do_sample=False, eos_token_id=None, pad_token_id=0)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = hf.generate(ids, generation_config=cfg)
        torch.cuda.synchronize()
        assert out.shape[1] == ids.shape[1] + k
        return time.perf_counter() - t0

    run(4)
    t1, tn = run(1), run(n)
    step = (tn - t1) / (n - 1)
    return {"ms_per_step": step * 1e3, "tokens_per_s": ids.shape[0] / step}


def profile_steps(model, ids: torch.Tensor, steps: int = 5) -> dict:
    """torch.profiler over a few decode steps: how many kernels, how much GPU-busy time per step."""
    from torch.profiler import ProfilerActivity, profile

    params = SamplingParams(max_tokens=steps + 1, temperature=0.0, ignore_eos=True)
    it = stream_kv_cache(model, ids, params)
    next(it)  # prefill outside the profile
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in it:
            pass
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / steps
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_busy = sum(e.device_time for e in events) / steps  # microseconds
    top = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:10]
    return {"wall_ms_per_step_profiled": wall * 1e3, "kernels_per_step": len(events) / steps,
            "gpu_busy_ms_per_step": gpu_busy / 1e3,
            "top_ops": [{"name": e.key, "count": e.count, "device_ms_total": e.device_time_total / 1e3}
                        for e in top]}


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64], help="batch sizes (default: 1 64)")
    ap.add_argument("--prompt-len", type=int, default=128, help="prompt tokens (default: %(default)s)")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per timed generation (default: %(default)s)")
    ap.add_argument("--no-hf", action="store_true", help="skip the HF transformers side")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_decode needs a CUDA GPU (it times the GPU decode step); the CPU figures come from "
                         "`python -m phase0_tinyllama.bench_kvcache`")
    from transformers import LlamaConfig, LlamaForCausalLM

    lm = load_model("tinyllama-1.1b", device="cuda", dtype="bf16", random_weights=True, seed=0)
    hf = None
    if not args.no_hf:
        hf = LlamaForCausalLM(LlamaConfig(**lm.config.to_hf_dict(), attn_implementation="eager"))
        hf = hf.to(device="cuda", dtype=torch.bfloat16).eval()
        hf.load_state_dict(lm.model.state_dict(), strict=True)
    weights = model_bytes(lm.model)
    rows = []
    for b in args.batch:
        ids = torch.randint(100, 31000, (b, args.prompt_len), device="cuda", generator=None)
        time_ours(lm.model, ids, 8)
        ours = time_ours(lm.model, ids, args.tokens)
        ctx = args.prompt_len + args.tokens // 2
        flops, nbytes = decode_step_cost(lm.config, b, ctx)
        row = {"batch": b, "prompt_len": args.prompt_len, "new_tokens": args.tokens, "ours": ours,
               "step_flops": flops, "step_min_bytes": nbytes,
               "ours_achieved_tb_s": nbytes / (ours["ms_per_step"] * 1e-3) / 1e12,
               "ours_pct_of_roofline": ROOFLINE_MS_B1 / ours["ms_per_step"] if b == 1 else None}
        if hf is not None:
            with torch.inference_mode():
                row["hf_eager"] = time_hf(hf, ids, args.tokens)
            row["speedup_vs_hf"] = row["hf_eager"]["ms_per_step"] / ours["ms_per_step"]
        if b == 1:
            row["profile"] = profile_steps(lm.model, ids)
        rows.append(row)
        print(f"B={b}: ours {ours['ms_per_step']:.2f} ms/step ({ours['tokens_per_s']:.0f} tok/s)"
              + (f", HF eager {row['hf_eager']['ms_per_step']:.2f} ms/step" if hf is not None else ""))
    payload = {"model": "tinyllama-1.1b shapes, random bf16 weights", "weight_bytes": weights,
               "roofline_ms_b1": ROOFLINE_MS_B1, "rows": rows, "memory": gpu_memory()}
    write_result("phase0_tinyllama", "decode_gpu", payload)
    return payload


if __name__ == "__main__":
    from common.cli import run_script

    run_script(main, "bench_decode")
