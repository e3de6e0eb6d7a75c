"""Where a decode step's time goes: the engine's steady decode under torch.profiler, per kernel class, plus the GPU's
idle share (the host's part of each step).

    python -m phase4_scheduler.profile_decode --model tinyllama-1.1b --random-weights --fuse --batches 1 64 256

For each batch size B: B requests (--prompt-len in, ignore_eos) are prefilled, a few decode steps warm up, then
--steps engine.step() calls run under the profiler (CPU + CUDA activity). From the trace:
- wall ms per step (perf_counter around the profiled steps, divided by the step count; the profiler's own overhead
  is included, so this is an upper bound: read the un-profiled figure from bench_latency / bench_offline);
- GPU busy ms per step: the union of kernel and memcpy intervals (overlapping kernels counted once);
- idle share = 1 - busy / wall: the time the GPU waited for the host (scheduling, inputs, sampling sync, outputs);
- per kernel class (GEMM, attention, norm, RoPE, activation, sampling, copies, other): kernels and microseconds
  per step, and the top kernels by time.
Kernels launched inside a CUDA graph are recorded by CUPTI like any other (one `cudaGraphLaunch` on the CPU side).
Writes results/profile_decode_<device>.json.
"""
from __future__ import annotations

import argparse
import time

import torch

from common.bench import write_result
from common.sampling import SamplingParams

CLASSES = (  # (class, substrings of the lower-cased kernel name), first match wins
    ("attention", ("attn", "attention", "paged", "flash", "decode_kernel", "softmax")),
    ("gemm", ("gemm", "gemv", "skinny", "xmma", "cutlass", "matmul", "sm90", "splitk", "dot")),
    ("norm", ("rms", "norm")),
    ("rope", ("rope", "rotary")),
    ("activation", ("silu", "gelu", "act_")),
    ("sampling", ("argmax", "max", "topk", "sort", "multinomial", "exponential")),
    ("copy", ("memcpy", "memset", "copy", "cat", "index", "fill", "scatter", "gather", "embedding")),
)


def classify(name: str) -> str:
    low = name.lower()
    for cls, keys in CLASSES:
        if any(k in low for k in keys):
            return cls
    return "other"


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (us)."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def summarize_kernels(kernels: list[tuple[str, float, float]], steps: int, wall_ms: float, top: int = 12) -> dict:
    """kernels: (name, start_us, end_us) of every device activity in the profiled window -> per-step summary."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    by_class: dict[str, dict] = {}
    by_name: dict[str, float] = {}
    for name, s, e in kernels:
        c = by_class.setdefault(classify(name), {"kernels_per_step": 0.0, "us_per_step": 0.0})
        c["kernels_per_step"] += 1 / steps
        c["us_per_step"] += (e - s) / steps
        by_name[name] = by_name.get(name, 0.0) + (e - s) / steps
    busy_ms = busy_us([(s, e) for _, s, e in kernels]) / steps / 1e3
    top_names = sorted(by_name.items(), key=lambda kv: -kv[1])[:top]
    return {"steps": steps, "wall_ms_per_step": wall_ms, "gpu_busy_ms_per_step": busy_ms,
            "gpu_idle_share": max(0.0, 1 - busy_ms / wall_ms) if wall_ms > 0 else None,
            "kernels_per_step": len(kernels) / steps, "classes": by_class,
            "top_kernels_us_per_step": [{"name": n[:120], "us": us} for n, us in top_names]}


def device_events(prof) -> list[tuple[str, float, float]]:
    """(name, start_us, end_us) of the CUDA-side events of a finished torch.profiler run."""
    out = []
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            out.append((ev.name, float(ev.time_range.start), float(ev.time_range.end)))
    return out


def prefill_steps_bound(batch: int, prompt_len: int, budget: int, admit_delay: int) -> int:
    """Steps until the last of `batch` prompts is prefilled, with room to spare: the running decodes take up to one
    token of the step budget each, so a prompt-carrying step prefills as little as budget - batch tokens (a 448 x
    1,536 batch at an 8,192 budget: 89 such steps, not the 84 of budget / prompt tokens), plus admit_delay steps."""
    per_step = max(budget - batch, budget // 2)
    return -(-batch * prompt_len // per_step) + admit_delay + 2


def profile_batch(eng, batch: int, prompt_len: int, steps: int, warm: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    vocab = eng.config.vocab_size
    g = torch.Generator().manual_seed(batch)
    # the first admitted requests decode while later ones are still prefilling: leave room for every prefill step,
    # so the whole batch is still running through the profiled window (checked below)
    # (admission batching may hold the last few seats for up to max_admit_delay_steps)
    sched = eng.scheduler
    prefill_steps = prefill_steps_bound(batch, prompt_len, sched.max_num_batched_tokens, sched.max_admit_delay_steps)
    params = SamplingParams(max_tokens=prefill_steps + warm + steps + 8, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        eng.add_request(f"p{batch}-{i}", torch.randint(100, vocab - 100, (prompt_len,), generator=g).tolist(), params)
    # fill the batch without admission batching: with CUDA graphs the engine holds the last max_num_seqs / 16 seats
    # until that many are free or 16 steps passed, so the last seats of a long-prompt batch filled a few per 17 steps
    # and the first requests ran out of max_tokens inside the window (B=448 x 1,536 on the H100: 285 left running;
    # the CPU test reproduces it with the same setting)
    admit, sched.admit_min_free_seats = sched.admit_min_free_seats, 1
    try:
        while len(sched.waiting) or any(r.num_computed_tokens < len(r.prompt_token_ids) for r in sched.running):
            eng.step()  # prefill (possibly over several steps)
    finally:
        sched.admit_min_free_seats = admit
    for _ in range(warm):
        eng.step()
    cuda = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            eng.step()
        if cuda:
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    res = summarize_kernels(device_events(prof), steps, wall_ms)
    res["batch"] = batch
    res["running_after_window"] = len(eng.scheduler.running)
    if res["running_after_window"] != batch:
        raise RuntimeError(f"B={batch}: only {res['running_after_window']} requests still running after the profiled "
                           "steps: the batch shrank inside the window")
    if not cuda:  # no device trace: say so instead of reporting a 100% idle GPU
        res.update(gpu_busy_ms_per_step=None, gpu_idle_share=None, note="no CUDA: no device activity to profile")
    while eng.has_unfinished():  # drain: the next batch starts from an empty engine
        eng.step()
    return res


def main(argv=None) -> dict:
    from common.model_loader import load_model
    from phase4_scheduler.engine import LLMEngine, freeze_heap

    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--model", default="tinyllama-1.1b")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--num-layers", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warm", type=int, default=5)
    ap.add_argument("--fuse", action="store_true")
    ap.add_argument("--cuda-graph", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--overlap", choices=["auto", "on", "off"], default="auto", help="overlapped decode (overlap.py)")
    ap.add_argument("--kv-memory", default="8GiB")
    ap.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto", help="KV pool dtype (fp8: phase 3's)")
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    if args.steps < 1 or any(b < 1 for b in args.batches):
        ap.error("--steps and --batches must be >= 1")
    loaded = load_model(args.model, device=args.device, random_weights=args.random_weights,
                        num_layers=args.num_layers)
    eng = LLMEngine(loaded, max_num_seqs=max(args.batches), max_num_batched_tokens=max(8192, args.prompt_len),
                    max_model_len=args.prompt_len + args.warm + args.steps + 160 + prefill_steps_bound(
                        max(args.batches), args.prompt_len, max(8192, args.prompt_len), 16), kv_memory=args.kv_memory,
                    fuse=args.fuse, cuda_graph={"auto": None, "on": True, "off": False}[args.cuda_graph],
                    detokenize=False, overlap={"auto": None, "on": True, "off": False}[args.overlap],
                    kv_cache_dtype=args.kv_cache_dtype)
    eng.warmup()
    freeze_heap()
    dev = "gpu" if loaded.device.type == "cuda" else "cpu"
    res = {"model": loaded.source, "dtype": str(loaded.dtype), "kv_cache_dtype": args.kv_cache_dtype,
           "fuse": args.fuse, "cuda_graph": args.cuda_graph,
           "overlap": eng.overlap,
           "gpu": torch.cuda.get_device_name() if dev == "gpu" else None, "rows": []}
    name = args.name or f"profile_decode_{dev}"
    for b in args.batches:
        r = profile_batch(eng, b, args.prompt_len, args.steps, args.warm)
        res["rows"].append(r)
        write_result("phase4_scheduler", name, res)  # after every batch size: a failure keeps the earlier rows
        cls = ", ".join(f"{k} {v['us_per_step']:.0f} us/{v['kernels_per_step']:.0f}k"
                        for k, v in sorted(r["classes"].items(), key=lambda kv: -kv[1]["us_per_step"]))
        busy = ("no device trace" if r["gpu_busy_ms_per_step"] is None else
                f"GPU busy {r['gpu_busy_ms_per_step']:.3f} ms (idle {r['gpu_idle_share']:.0%})")
        print(f"B={b}: wall {r['wall_ms_per_step']:.3f} ms/step, {busy}, {r['kernels_per_step']:.0f} kernels/step: "
              f"{cls}")
    return res


if __name__ == "__main__":
    from common.cli import run_script

    run_script(main, "profile_decode")
