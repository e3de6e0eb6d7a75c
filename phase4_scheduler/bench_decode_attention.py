"""GPU A/B of the decode step's attention: the fused kernel (decode_attention.py: RoPE + cache write + attention +
split merge, one launch) against the unfused sequence (rope_qk, write_kv_cache, paged_decode and its reduce: up to
four launches), at the engine's regimes, TinyLlama shapes (32 q / 4 KV heads x 64, bf16, 16-token blocks).

    PYTHONPATH=$PWD TITAN_RESULTS_DIR=$OUT python3 -m phase4_scheduler.bench_decode_attention [--cases 1x256 64x512]

Each timing is one CUDA graph that runs the attention of all `--layers` layers (each layer its own cache, as in the
model, so the history is read from HBM rather than L2) with PDL as the engine launches it; reported per layer.
Both paths are checked against each other on the same inputs before timing. Writes
results/decode_attention_gpu.json (name with --name).
"""
from __future__ import annotations

import argparse

import torch
from tqdm.auto import tqdm

from common import artifacts
from common.bench import write_result
from phase4_scheduler import fused_kernels as fk
from phase4_scheduler.bench_fused import graph_ms
from phase4_scheduler.decode_attention import decode_attention, fused_plan

HQ, HKV, D, BS = 32, 4, 64, 16


def random_caches(nblk: int, layers: int, g: torch.Generator, fp8: bool = False, dev: str = "cuda") -> list[tuple]:
    """Per layer (k_cache, v_cache, k_scale, v_scale) [nblk, BS, HKV, D]: N(0, 1) draws in bf16 with no scales, or
    the same draws through phase 3's cache quantiser (e4m3 + one fp16 scale per token and KV head, as the engine's
    FP8 pool holds them)."""
    quant = artifacts.get("kv_cache.fp8_quantize")

    def one():
        x = torch.randn(nblk, BS, HKV, D, device=dev, generator=g, dtype=torch.bfloat16)
        return quant(x) if fp8 else (x, None)
    out = []
    for _ in range(layers):
        (kc, ks), (vc, vs) = one(), one()
        out.append((kc, vc, ks, vs))
    return out


def build(b: int, ctx: int, layers: int, seed: int = 0, fp8: bool = False, dev: str = "cuda"):
    g = torch.Generator(device=dev).manual_seed(seed)
    per_seq = -(-ctx // BS)
    nblk = b * per_seq + 1
    caches = random_caches(nblk, layers, g, fp8, dev)
    bt = torch.randperm(nblk - 1, device=dev, generator=g)[:b * per_seq].view(b, per_seq).to(torch.int32)
    lens = torch.full((b,), ctx, dtype=torch.int32, device=dev)
    pos = (lens - 1).long()
    slots = (bt[:, (ctx - 1) // BS].long() * BS + (ctx - 1) % BS)
    qkv = torch.randn(b, (HQ + 2 * HKV) * D, device=dev, generator=g, dtype=torch.bfloat16)
    cs = torch.randn(ctx + 8, D, device=dev, generator=g)
    return caches, bt, lens, pos, slots, qkv, cs


def views(qkv, b):
    nq, nk = HQ * D, HKV * D
    return (qkv[:, :nq].view(b, HQ, D), qkv[:, nq:nq + nk].view(b, HKV, D), qkv[:, nq + nk:].view(b, HKV, D))


def unfused(caches, bt, lens, pos, slots, qkv, cs, layer):
    b = qkv.shape[0]
    fk.rope_qk(qkv, pos, cs, HQ, HKV, D)
    q, k, v = views(qkv, b)
    kc, vc, ks, vs = caches[layer]
    artifacts.get("kv_cache.write")(k, v, slots, kc, vc, ks, vs)
    return artifacts.get("attention.paged_decode")(q, kc, vc, bt, lens, ks, vs)


def fused(caches, bt, lens, pos, slots, qkv, cs, layer, counters, rope=True):
    q, k, v = views(qkv, qkv.shape[0])
    kc, vc, ks, vs = caches[layer]
    return decode_attention(q, k, v, slots, kc, vc, bt, lens, pos if rope else None, cs if rope else None,
                            counters=counters, k_scale=ks, v_scale=vs)


def graph_us(fn, layers: int) -> float:
    """Median us per layer: one CUDA graph calls fn(layer) for every layer (bench_fused.graph_ms: warm-up outside
    the capture, median of the replays)."""
    return graph_ms([lambda i=i: fn(i) for i in range(layers)], reps=20) * 1e3


def check_case(b: int, ctx: int, fp8: bool = False, dev: str = "cuda"):
    """The fused path (q, k, v untouched) against the unfused one (rotates a copy in place) on the same inputs, one
    layer: (max |difference|, the same cache bytes -- FP8 codes as bytes and the scales --, counters left zeroed)."""
    caches, bt, lens, pos, slots, qkv, cs = build(b, ctx, 1, fp8=fp8, dev=dev)
    counters = torch.zeros(b * HKV, dtype=torch.int32, device=dev)
    c0 = [tuple(None if t is None else t.clone() for t in c) for c in caches]
    want = unfused(c0, bt, lens, pos, slots, qkv.clone(), cs, 0)
    got = fused(caches, bt, lens, pos, slots, qkv, cs, 0, counters)
    err = (got.float() - want.float()).abs().max().item()
    as_bytes = lambda t: t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t  # noqa: E731
    cache_equal = all(torch.equal(as_bytes(a), as_bytes(w)) for a, w in zip(caches[0], c0[0]) if a is not None)
    return err, cache_equal, int(counters.abs().sum()) == 0


def run_case(b: int, ctx: int, layers: int, fp8: bool = False) -> dict:
    err, cache_equal, counters_zero = check_case(b, ctx, fp8)
    caches, bt, lens, pos, slots, qkv, cs = build(b, ctx, layers, fp8=fp8)
    counters = torch.zeros(b * HKV, dtype=torch.int32, device="cuda")
    plan = fused_plan(qkv.device, b, HKV, bt.shape[1] * BS, fp8)  # what the fused kernel launches with
    work = qkv.clone()  # the unfused path rotates its input in place on every call
    t_unfused = graph_us(lambda i: unfused(caches, bt, lens, pos, slots, work, cs, i), layers)
    t_fused = graph_us(lambda i: fused(caches, bt, lens, pos, slots, qkv, cs, i, counters), layers)
    # ablation: the same kernel without RoPE (q and k taken as already rotated)
    t_norope = graph_us(lambda i: fused(caches, bt, lens, pos, slots, qkv, cs, i, counters, rope=False), layers)
    kv_bytes = 2 * b * ctx * HKV * (D + 2 if fp8 else D * 2)  # FP8: a byte per element + an fp16 scale per row
    return {"kv_cache_dtype": "fp8" if fp8 else "bf16", "batch": b, "ctx": ctx, "num_splits": plan[3],
            "block_n": plan[0], "num_warps": plan[1], "num_stages": plan[2], "max_abs_diff": err,
            "cache_equal": cache_equal, "counters_zero": counters_zero,
            "unfused_us": t_unfused, "fused_us": t_fused, "fused_without_rope_us": t_norope,
            "speedup": t_unfused / t_fused,
            "fused_kv_TBps": kv_bytes / t_fused / 1e6, "unfused_kv_TBps": kv_bytes / t_unfused / 1e6}


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["1x256", "1x2048", "8x1024", "64x512", "256x512", "1024x192"],
                    help="BATCHxCONTEXT pairs (context includes the new token)")
    ap.add_argument("--layers", type=int, default=22, help="layers per graph (each its own cache); TinyLlama: 22")
    ap.add_argument("--kv-cache-dtype", choices=["bf16", "fp8", "both"], default="bf16",
                    help="the cache's format (fp8: phase 3's e4m3 + fp16 scales); both: each case over each, same run")
    ap.add_argument("--name", default="decode_attention_gpu")
    args = ap.parse_args(argv)
    dts = ["bf16", "fp8"] if args.kv_cache_dtype == "both" else [args.kv_cache_dtype]
    cases = [f"{c}:{dt}" for c in args.cases for dt in dts]
    return sweep_cases("bench_decode_attention", cases,
                       lambda c: run_case(*map(int, c.split(":")[0].split("x")), args.layers,
                                          fp8=c.endswith(":fp8")), args.layers, args.name)


def sweep_cases(tool: str, cases: list[str], run_one, layers: int, name: str) -> dict:
    """Run each case on the GPU (run_one(case) -> a row), print it, and write results/<name>.json after every case
    (a failure keeps the earlier rows)."""
    if not torch.cuda.is_available():
        raise SystemExit(f"{tool} needs CUDA (it times kernels on the GPU)")
    rows, res = [], {}
    for c in tqdm(cases, desc="cases"):
        r = run_one(c)
        print(r, flush=True)
        rows.append(r)
        res = {"model_shapes": f"{HQ}q/{HKV}kv x {D}, bf16 activations, block {BS} (each row names its cache format)",
               "layers": layers, "rows": rows}
        write_result("phase4_scheduler", name, res)
    return res


if __name__ == "__main__":
    main()
