"""Shared pieces of the phase-3 GPU benchmarks: CUDA-graph timing, random paged caches, the copy ceiling, and the
section runner that records each result (or its error) and rewrites the JSON after every section.

`DEV` is "cuda" on the GPU; `bench_attention --smoke` sets it to "cpu" to run the whole script at toy sizes under
the Triton interpreter (the numbers then mean nothing; the point is that the script itself runs).
"""
from __future__ import annotations

import statistics
import traceback

import torch
import torch.nn.functional as F

from common.bench import provenance, write_result
from phase3_paged_fp8.cache_write import FP8, SCALE_DTYPE
from phase3_paged_fp8.paged_decode import gather_kv

PHASE = "phase3_paged_fp8"
RESULTS: dict = {}
DEV = "cuda"
RESULT_NAME = "attention_h100"


def gpu_ms(fn, reps: int = 20, rounds: int = 7) -> float:
    """Median ms per call of fn, replayed from a CUDA graph (falls back to an eager loop if capture fails)."""
    if DEV == "cpu":
        import time
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    run = fn
    try:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        run = g.replay
    except Exception:  # noqa: BLE001 - eager timing is still a timing
        torch.cuda.synchronize()
    out = []
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            run()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) / reps)
    return statistics.median(out)


def make_paged(b, ctx, hkv, d, bs, dtype, extra_blocks=0, seed=0):
    """A pool with exactly the blocks the batch needs (+extra), handed out in a random permutation."""
    gen = torch.Generator(device=DEV).manual_seed(seed)
    nblk = -(-ctx // bs)
    n = b * nblk + extra_blocks
    kc = torch.randn(n, bs, hkv, d, device=DEV, dtype=torch.bfloat16, generator=gen)
    vc = torch.randn(n, bs, hkv, d, device=DEV, dtype=torch.bfloat16, generator=gen)
    ks = vs = None
    if dtype == FP8:
        ks = (kc.float().abs().amax(-1) / 448).to(SCALE_DTYPE)
        vs = (vc.float().abs().amax(-1) / 448).to(SCALE_DTYPE)
        kc = (kc.float() / ks.float()[..., None]).to(FP8)
        vc = (vc.float() / vs.float()[..., None]).to(FP8)
    bt = torch.randperm(n, device=DEV, generator=gen)[:b * nblk].view(b, nblk).to(torch.int32)
    lens = torch.full((b,), ctx, dtype=torch.int32, device=DEV)
    return kc, vc, ks, vs, bt, lens


def kv_bytes(kc, ks, b, ctx):
    per_tok = kc.shape[2] * kc.shape[3] * kc.element_size() + (kc.shape[2] * 2 if ks is not None else 0)
    return 2 * b * ctx * per_tok


def section(name, fn, *args, **kwargs):
    """Run one benchmark section, record its result (or its error) and rewrite the JSON."""
    print(f"== {name}", flush=True)
    try:
        RESULTS[name] = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - record and go on to the next section
        traceback.print_exc()
        RESULTS[name] = {"error": f"{type(e).__name__}: {e}"}
    if isinstance(RESULTS[name], dict):  # which run measured it (sections are kept across --only reruns)
        RESULTS[name]["run"] = {"date": provenance()["date"], "commit": provenance()["commit"]}
    write_result(PHASE, RESULT_NAME, RESULTS)
    return RESULTS[name]


def copy_ceiling():
    """Device-to-device copy (bytes read + written) several ways, and a read-only reduction; the max is the ceiling."""
    out = {}
    for mib in ((256, 1024, 4096) if DEV == "cuda" else (1,)):
        x = torch.randn(mib * 2**19, device=DEV, dtype=torch.bfloat16)  # mib MiB
        y = torch.empty_like(x)
        nb = 2 * x.numel() * 2
        out[f"memcpy_{mib}MiB_graph"] = nb / gpu_ms(lambda: y.copy_(x), reps=10) / 1e9
        out[f"elementwise_{mib}MiB_graph"] = nb / gpu_ms(lambda: torch.mul(x, 1.0, out=y), reps=10) / 1e9
        out[f"read_only_sum_{mib}MiB_graph"] = nb / 2 / gpu_ms(lambda: x.sum(dtype=torch.float32), reps=10) / 1e9
        del x, y
    copy = max(v for k, v in out.items() if not k.startswith("read_only"))
    return {"tb_s_by_method": out, "tb_s": copy, "read_only_tb_s": max(v for k, v in out.items()
                                                                      if k.startswith("read_only"))}


def gather_sdpa(q, kc, vc, ks, vs, bt, ctx):
    """The PyTorch paged baseline: gather pages into contiguous K/V, then SDPA (GQA without copying heads)."""
    k = gather_kv(kc, ks, bt, ctx, q.dtype)
    v = gather_kv(vc, vs, bt, ctx, q.dtype)
    return F.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True)[:, :, 0]


def best_cfg(key):
    return RESULTS[key]["best"]
