"""Phase 2's GPU benchmarks, all in one run (the device allowance is one or two calls):

1. the copy ceiling (device-to-device, bytes read + written), measured in the same process;
2. RoPE in place (CUDA C and Triton, both layouts) at decode-batch and prefill shapes, as % of that ceiling;
3. MLA paged decode (Triton) at DeepSeek-V3 dims (128 heads, B=64, ctx 4K), sweeping kernel configs, checked
   against a PyTorch reference, as bandwidth (KV bytes / time) and TFLOP/s; the same at 16 heads (one GPU of TP=8);
4. our GQA decode at the same batch / context / query heads: phase 3's paged Triton kernel through the seam
   ("attention.paged_decode") when it is registered, and always SDPA (flash) on a contiguous cache.

    PYTHONPATH=. python -m phase2_mla.bench_mla            # writes phase2_mla/results/bench_mla.json
    PYTHONPATH=. python -m phase2_mla.bench_mla --only mla,gqa   # sections: rope, mla, gqa
On the GPU machine: `TITAN_RESULTS_DIR=$OUT TITAN_COMMIT=<sha> python3 -m phase2_mla.bench_mla` (no git there).

NOTE (method): short kernels are timed inside a CUDA graph of `inner` back-to-back launches, so the figure is the
GPU time per launch, not Python's launch overhead; long ones are timed directly with CUDA events. Medians.
"""
from __future__ import annotations

import math
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import artifacts
from common.bench import time_fn, write_result

DSV3 = dict(dc=512, dr=64)


def graph_ms(fn, inner: int = 20, iters: int = 15) -> float:
    """Median GPU milliseconds per call of fn, from a CUDA graph holding `inner` calls."""
    fn()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(inner):
            fn()
    return time_fn(g.replay, warmup=2, iters=iters)["median_ms"] / inner


def copy_ceiling() -> dict:
    n = 1 << 29  # 1 GiB of bf16 read + 1 GiB written
    src, dst = torch.randn(n, device="cuda", dtype=torch.bfloat16), torch.empty(n, device="cuda", dtype=torch.bfloat16)
    ms = time_fn(lambda: dst.copy_(src), warmup=3, iters=20)["median_ms"]
    del src, dst
    return {"bytes": 2 * 2 * n, "ms": ms, "tb_s": 2 * 2 * n / ms / 1e9}


ROPE_SHAPES = [  # name, tokens, Hq, Hk, rot_dim, q head width (rot_dim = the whole head unless wider), layout
    ("decode B=256, Llama-3-8B heads 32q/8kv x128", 256, 32, 8, 128, 128, "half"),
    ("decode B=1024, Llama-3-8B heads 32q/8kv x128", 1024, 32, 8, 128, 128, "half"),
    ("decode B=1024, DeepSeek q_pe (128 x 64 of 192) + k_pe", 1024, 128, 1, 64, 192, "interleaved"),
    ("prefill 16K tokens, Llama-3-8B heads 32q/8kv x128", 16384, 32, 8, 128, 128, "half"),
    ("prefill 16K tokens, same, interleaved", 16384, 32, 8, 128, 128, "interleaved"),
    ("prefill 8K tokens, DeepSeek q_pe (128 x 64 of 192) + k_pe", 8192, 128, 1, 64, 192, "interleaved"),
]


def bench_rope(ceiling_tb_s: float) -> list[dict]:
    from phase2_mla.rope import cos_sin_cache, rope_, rope_ref
    from phase2_mla.rope_cuda import rope_cuda_

    rows = []
    for name, t, hq, hk, r, width, layout in tqdm(ROPE_SHAPES, desc="rope"):
        # NOTE: enough distinct (q, k) sets to exceed the 50 MB L2 twice over, cycled launch after launch: a small
        # decode-shape tensor rotated in place again and again would otherwise stay in L2 and beat HBM.
        set_bytes = t * (hq * width + hk * r) * 2
        n_sets = max(1, min(48, math.ceil(160e6 / set_bytes)))
        sets = []
        for _ in range(n_sets):
            qfull = torch.randn(t, hq, width, device="cuda", dtype=torch.bfloat16)
            sets.append((qfull[..., width - r:], torch.randn(t, hk, r, device="cuda", dtype=torch.bfloat16),
                         torch.randint(0, 32768, (t,), device="cuda")))
        q, k, pos = sets[0]
        inv = 1.0 / (10000 ** (torch.arange(0, r, 2, dtype=torch.float32) / r))
        cos, sin = cos_sin_cache(inv, 32768, device="cuda")
        useful = 2 * (q.numel() + k.numel()) * 2  # bytes read + written
        errs = {}  # correctness of both kernels on these very tensors, against the reference
        for impl, fn in (("cuda", rope_cuda_), ("triton", rope_)):
            q1, k1 = q.clone(), k.clone()
            rq, rk = rope_ref(q1, k1, cos, sin, pos, layout)
            fn(q1, k1, cos, sin, pos, layout)
            errs[impl] = max((q1.float() - rq.float()).abs().max().item(), (k1.float() - rk.float()).abs().max().item())
        bufs = [(torch.empty(useful // 4, device="cuda", dtype=torch.bfloat16),
                 torch.empty(useful // 4, device="cuda", dtype=torch.bfloat16)) for _ in range(n_sets)]
        inner = n_sets * max(1, (20 if t < 4096 else 3) // n_sets)

        def cycling(op, items):
            i = [0]

            def fn():
                op(*items[i[0] % len(items)])
                i[0] += 1
            return fn

        row = {"shape": name, "tokens": t, "hq": hq, "hk": hk, "rot_dim": r, "layout": layout, "bytes": useful,
               "distinct_buffers": n_sets, "max_abs_err": errs,
               "copy_same_bytes_ms": graph_ms(cycling(lambda a, b: b.copy_(a), bufs), inner)}
        row["copy_same_bytes_tb_s"] = useful / row["copy_same_bytes_ms"] / 1e9
        for impl, op in (("cuda", lambda q, k, p: rope_cuda_(q, k, cos, sin, p, layout, check_bounds=False)),
                         ("triton", lambda q, k, p: rope_(q, k, cos, sin, p, layout, check_bounds=False)),
                         ("torch_eager", lambda q, k, p: _rope_eager(q, k, cos, sin, p, layout, rope_ref))):
            ms = graph_ms(cycling(op, sets), inner)
            row[impl] = {"ms": ms, "tb_s": useful / ms / 1e9, "pct_of_copy_ceiling": useful / ms / 1e9 / ceiling_tb_s,
                         "pct_of_same_size_copy": row["copy_same_bytes_ms"] / ms}
        rows.append(row)
        tqdm.write(f"  {name}: cuda {row['cuda']['tb_s']:.2f} TB/s ({row['cuda']['pct_of_copy_ceiling']:.0%}), "
                   f"triton {row['triton']['tb_s']:.2f} TB/s ({row['triton']['pct_of_copy_ceiling']:.0%}), "
                   f"eager {row['torch_eager']['tb_s']:.2f}; same-size copy {row['copy_same_bytes_tb_s']:.2f}")
        del sets, bufs, q, k
    return rows


def _rope_eager(q, k, cos, sin, pos, layout, rope_ref):
    rq, rk = rope_ref(q, k, cos, sin, pos, layout)
    q.copy_(rq)
    k.copy_(rk)


def mla_inputs(b: int, h: int, ctx: int, page: int = 64, dtype=torch.bfloat16, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    nblk = b * math.ceil(ctx / page)
    kv = torch.randn(nblk, page, DSV3["dc"] + DSV3["dr"], device="cuda", dtype=dtype, generator=g)
    bt = torch.randperm(nblk, device="cuda", generator=g).to(torch.int32).view(b, -1)
    q_lat = torch.randn(b, h, DSV3["dc"], device="cuda", dtype=dtype, generator=g)
    q_pe = torch.randn(b, h, DSV3["dr"], device="cuda", dtype=dtype, generator=g)
    lens = torch.full((b,), ctx, dtype=torch.int32, device="cuda")
    return q_lat, q_pe, kv, bt, lens


def mla_ref_full(q_lat, q_pe, kv, bt, ctx: int, scale: float) -> torch.Tensor:
    """Fast fp32 reference for uniform lengths that fill whole pages."""
    b, h, dc = q_lat.shape
    rows = kv[bt.long()].reshape(b, -1, kv.shape[-1])[:, :ctx].float()  # [B, ctx, 576]
    s = torch.einsum("bhd,btd->bht", torch.cat((q_lat, q_pe), -1).float(), rows) * scale
    return torch.einsum("bht,btd->bhd", s.softmax(-1), rows[..., :dc])


def sweep_mla(b: int, h: int, ctx: int, configs: list[dict], label: str) -> dict:
    from phase2_mla.mla_decode import mla_paged_decode

    q_lat, q_pe, kv, bt, lens = mla_inputs(b, h, ctx)
    scale = 192 ** -0.5
    ref = mla_ref_full(q_lat, q_pe, kv, bt, ctx, scale)
    kv_bytes = b * ctx * kv.shape[-1] * kv.element_size()
    flops = 2 * b * h * ctx * (kv.shape[-1] + DSV3["dc"])
    rows = []
    for cfg in tqdm(configs, desc=label):
        def fn(cfg=cfg):
            return mla_paged_decode(q_lat, q_pe, kv, bt, lens, scale, max_seq_len=ctx, check=False, **cfg)
        try:
            err = (fn().float() - ref).abs().max().item()
            ms = graph_ms(fn, inner=5)
            rows.append({**cfg, "ms": ms, "tb_s": kv_bytes / ms / 1e9, "tflops": flops / ms / 1e9, "max_abs_err": err})
        except Exception as e:  # e.g. out of shared memory / registers for a big tile
            rows.append({**cfg, "error": f"{type(e).__name__}: {str(e)[:160]}"})
    ok = [r for r in rows if "ms" in r and r["max_abs_err"] < 2e-2]
    best = min(ok, key=lambda r: r["ms"]) if ok else None
    if best:
        tqdm.write(f"  {label}: best {best['ms'] * 1e3:.1f} us = {best['tb_s']:.2f} TB/s, {best['tflops']:.0f} TFLOP/s "
                   f"({ {k: best[k] for k in configs[0]} })")
    return {"batch": b, "heads": h, "ctx": ctx, "page": 64, "kv_bytes": kv_bytes, "flops": flops, "rows": rows,
            "best": best}


def gqa_decode(b: int, hq: int, hkv: int, d: int, ctx: int, page: int = 64) -> dict:
    """Our GQA decode at the same batch / context / query heads: seam kernel (if registered) and SDPA (flash)."""
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(b, hq, d, device="cuda", dtype=torch.bfloat16, generator=g)
    kv_bytes = 2 * b * ctx * hkv * d * 2
    out = {"batch": b, "hq": hq, "hkv": hkv, "head_dim": d, "ctx": ctx, "kv_bytes": kv_bytes}
    k = torch.randn(b, hkv, ctx, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn_like(k)
    qg = q.view(b, hkv, hq // hkv, d)  # the G query heads of a KV head act as G query rows: flash runs GQA decode
    ms = graph_ms(lambda: F.scaled_dot_product_attention(qg, k, v), inner=5)
    out["sdpa"] = {"ms": ms, "tb_s": kv_bytes / ms / 1e9}
    try:
        paged_decode = artifacts.get("attention.paged_decode")
        out["paged_source"] = artifacts.target("attention.paged_decode")
    except KeyError:
        out["paged_source"] = None
        out["paged_note"] = "attention.paged_decode is not registered in common/artifacts.py: SDPA only"
    if out["paged_source"]:
        nblk = b * math.ceil(ctx / page)
        kc = k.transpose(1, 2).reshape(nblk, page, hkv, d).contiguous()  # [blocks, page, Hkv, D]
        vc = v.transpose(1, 2).reshape(nblk, page, hkv, d).contiguous()
        del k, v
        perm = torch.randperm(nblk, device="cuda", generator=g)
        kc, vc = kc[perm.argsort()], vc[perm.argsort()]  # physical block perm[j] holds logical block j
        bt = perm.to(torch.int32).view(b, -1)
        lens = torch.full((b,), ctx, dtype=torch.int32, device="cuda")
        best = None
        for bn in (32, 64):
            for nw in (4, 8):
                try:
                    ms = graph_ms(lambda: paged_decode(q, kc, vc, bt, lens, max_seq_len=ctx, block_n=bn,
                                                       num_warps=nw), inner=5)
                except Exception as e:
                    out.setdefault("paged_errors", []).append(f"bn={bn} nw={nw}: {type(e).__name__}: {str(e)[:120]}")
                    continue
                if best is None or ms < best["ms"]:
                    best = {"ms": ms, "tb_s": kv_bytes / ms / 1e9, "block_n": bn, "num_warps": nw}
        out["paged"] = best
    return out


def mla_configs(heads: int) -> list[dict]:
    """The sweep: head block x token tile x warps x stages, and two variants that trade work for registers and
    shared memory (value split, q re-read each tile; see kernel_resources.py)."""
    def c(bh, bn, nw, st=2, dv_split=1, reload_q=False):
        return dict(block_h=bh, block_n=bn, num_warps=nw, num_stages=st, num_splits=None, dv_split=dv_split,
                    reload_q=reload_q)
    if heads < 64:
        return [c(16, 32, 4), c(16, 64, 8), c(16, 64, 4, 3), c(16, 128, 4)]
    # run 1 (16 configs, bn <= 32 with 64 heads) peaked at block_h=64, block_n=32, 8 warps (216 registers, 144 KB
    # of shared memory: one program per SM): widen the token tile and try the variants
    return [c(64, 32, 8), c(64, 64, 8), c(64, 128, 8, 1), c(32, 32, 4), c(32, 64, 4), c(32, 128, 4, 1),
            c(64, 32, 8, reload_q=True), c(64, 32, 8, dv_split=2), c(64, 16, 4, dv_split=4),
            c(64, 64, 8, reload_q=True)]


def split_sweep(best: dict, b: int, h: int, ctx: int, label: str) -> dict:
    base = {k: best[k] for k in ("block_h", "block_n", "num_warps", "num_stages", "dv_split", "reload_q") if k in best}
    return sweep_mla(b, h, ctx, [dict(base, num_splits=s) for s in (1, 2, 4, 8)], label)


def main(argv: list[str] | None = None) -> int:
    if not torch.cuda.is_available():
        print("bench_mla needs a CUDA GPU (it measures H100 bandwidth); the CPU figures come from "
              "`python -m phase2_mla.kv_arith`.")
        return 1
    t0 = time.time()
    res: dict = {"copy_ceiling": copy_ceiling(), "errors": {}}
    ceil = res["copy_ceiling"]["tb_s"]
    print(f"copy ceiling: {ceil:.2f} TB/s")
    b, ctx = 64, 4096

    def section(name, fn):  # one broken section must not cost the others (the device time is scarce)
        try:
            res[name] = fn()
        except Exception as e:
            res["errors"][name] = f"{type(e).__name__}: {e}"
            print(f"section {name} failed: {res['errors'][name]}")
        write_result("phase2_mla", "bench_mla", res)  # after every section: a killed run still leaves its figures

    args = argv if argv is not None else []
    only = set(args[args.index("--only") + 1].split(",")) if "--only" in args else {"rope", "mla", "gqa"}
    if "rope" in only:
        section("rope", lambda: bench_rope(ceil))
    if "mla" in only:
        section("mla_dsv3", lambda: sweep_mla(b, 128, ctx, mla_configs(128), "MLA 128 heads B=64 ctx=4K"))
        if (res.get("mla_dsv3") or {}).get("best"):
            section("mla_dsv3_splits", lambda: split_sweep(res["mla_dsv3"]["best"], b, 128, ctx, "MLA 128h splits"))
        section("mla_tp8", lambda: sweep_mla(b, 16, ctx, mla_configs(16), "MLA 16 heads (TP=8) B=64 ctx=4K"))
    if "gqa" in only:
        section("gqa_dsv3", lambda: gqa_decode(b, 128, 8, 128, ctx))
        section("gqa_tp8", lambda: gqa_decode(b, 16, 1, 128, ctx))
    section("summary", lambda: summarize(res, ceil, t0))
    print({k: v for k, v in (res.get("summary") or {}).items() if k != "rope_decode_pct_of_ceiling"})
    write_result("phase2_mla", "bench_mla", res)
    return 0


def summarize(res: dict, ceil: float, t0: float) -> dict:
    bests = [r["best"] for r in (res["mla_dsv3"], res.get("mla_dsv3_splits", {})) if r.get("best")]
    mla_best = min(bests, key=lambda r: r["ms"]) if bests else None
    gq = res["gqa_dsv3"]
    gqa_ms = min(x["ms"] for x in (gq["sdpa"], gq.get("paged") or gq["sdpa"]))
    return {
        "copy_ceiling_tb_s": ceil,
        "rope_decode_pct_of_ceiling": {r["shape"]: max(r["cuda"]["pct_of_copy_ceiling"],
                                                       r["triton"]["pct_of_copy_ceiling"])
                                       for r in res.get("rope", [])},
        "mla_dsv3_best": mla_best,
        "mla_dsv3_tb_s": mla_best["tb_s"] if mla_best else None,
        "gqa_dsv3_ms": gqa_ms, "gqa_dsv3_source": "paged (seam)" if gq.get("paged") and gq["paged"]["ms"] == gqa_ms
        else "sdpa",
        "mla_over_gqa_time": mla_best["ms"] / gqa_ms if mla_best else None,
        "mla_tp8_best": res["mla_tp8"]["best"],
        "gqa_tp8_ms": min(x["ms"] for x in (res["gqa_tp8"]["sdpa"], res["gqa_tp8"].get("paged") or
                                            res["gqa_tp8"]["sdpa"])),
        "seconds": time.time() - t0}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
