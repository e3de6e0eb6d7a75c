"""Phase 2's GPU benchmarks, all in one run (the device allowance is one or two calls):

1. the copy ceiling (device-to-device, bytes read + written), measured in the same process;
2. RoPE in place (CUDA C and Triton, both layouts) at decode-batch and prefill shapes, as % of that ceiling;
3. MLA paged decode (Triton) at DeepSeek-V3 dims (128 heads, B=64, ctx 4K), sweeping kernel configs, checked
   against a PyTorch reference, as bandwidth (KV bytes / time) and TFLOP/s; the same at 16 heads (one GPU of TP=8);
4. our GQA decode at the same batch / context / query heads: phase 3's paged Triton kernel through the seam
   ("attention.paged_decode") when it is registered, and always SDPA (flash) on a contiguous cache.

    PYTHONPATH=. python -m phase2_mla.bench_mla            # writes phase2_mla/results/bench_mla.json
    PYTHONPATH=. python -m phase2_mla.bench_mla --only mla,gqa   # sections: rope, mla, gqa
    PYTHONPATH=. python -m phase2_mla.bench_mla --merge-gqa phase2_mla/results/bench_mla_gqa.json   # CPU, offline
    PYTHONPATH=. python -m phase2_mla.bench_mla --merge-rope phase2_mla/results/bench_mla_rope.json # CPU, offline
(the merges fold a section measured in another device call on the same GPU model into bench_mla.json: they built
the H100 record, now bench_mla_h100.json, and bench_merge refuses them on today's H200 record.)
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
DEV = "cuda"  # every tensor's device: a CPU dry run of the sections' logic (interpreter, tiny shapes) patches it
DTYPE = torch.bfloat16  # the MLA cache / query dtype (the dry run uses fp32: the interpreter's bf16 dot is unusable)
RAGGED_LENS = [1, 77, 300, 1025]  # the correctness case each MLA configuration must pass before it is timed


def capture(fn, inner: int) -> torch.cuda.CUDAGraph:
    """A CUDA graph holding `inner` calls of fn (warmed up eagerly and on a side stream first)."""
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
    return g


def graph_ms(fn, inner: int = 20, iters: int = 15) -> float:
    """Median GPU milliseconds per call of fn, from a CUDA graph holding `inner` calls."""
    return time_fn(capture(fn, inner).replay, warmup=2, iters=iters)["median_ms"] / inner


def interleaved_ms(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Each fn's ms per call (graph_ms, 5 calls a graph) in `rounds` interleaved rounds -- fn 1, 2, ..., then again
    -- so clock and lease drift fall on all of them alike; {name: [ms of each round]}."""
    out = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            out[k].append(graph_ms(fn, inner=5, iters=10))
    return out


def copy_ceiling() -> dict:
    n = 1 << 29  # 1 GiB of bf16 read + 1 GiB written
    src, dst = torch.randn(n, device=DEV, dtype=torch.bfloat16), torch.empty(n, device=DEV, dtype=torch.bfloat16)
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
            qfull = torch.randn(t, hq, width, device=DEV, dtype=torch.bfloat16)
            sets.append((qfull[..., width - r:], torch.randn(t, hk, r, device=DEV, dtype=torch.bfloat16),
                         torch.randint(0, 32768, (t,), device=DEV)))
        q, k, pos = sets[0]
        inv = 1.0 / (10000 ** (torch.arange(0, r, 2, dtype=torch.float32) / r))
        cos, sin = cos_sin_cache(inv, 32768, device=DEV)
        useful = 2 * (q.numel() + k.numel()) * 2  # bytes read + written
        errs = {}  # correctness of both kernels on these very tensors, against the reference
        for impl, fn in (("cuda", rope_cuda_), ("triton", rope_)):
            q1, k1 = q.clone(), k.clone()
            rq, rk = rope_ref(q1, k1, cos, sin, pos, layout)
            fn(q1, k1, cos, sin, pos, layout)
            errs[impl] = max((q1.float() - rq.float()).abs().max().item(), (k1.float() - rk.float()).abs().max().item())
        bufs = [(torch.empty(useful // 4, device=DEV, dtype=torch.bfloat16),
                 torch.empty(useful // 4, device=DEV, dtype=torch.bfloat16)) for _ in range(n_sets)]
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


def mla_inputs(b: int, h: int, ctx: int, page: int = 64, dtype=None, seed: int = 0):
    dtype = dtype or DTYPE
    g = torch.Generator(device=DEV).manual_seed(seed)
    nblk = b * math.ceil(ctx / page)
    kv = torch.randn(nblk, page, DSV3["dc"] + DSV3["dr"], device=DEV, dtype=dtype, generator=g)
    bt = torch.randperm(nblk, device=DEV, generator=g).to(torch.int32).view(b, -1)
    q_lat = torch.randn(b, h, DSV3["dc"], device=DEV, dtype=dtype, generator=g)
    q_pe = torch.randn(b, h, DSV3["dr"], device=DEV, dtype=dtype, generator=g)
    lens = torch.full((b,), ctx, dtype=torch.int32, device=DEV)
    return q_lat, q_pe, kv, bt, lens


def mla_ref_full(q_lat, q_pe, kv, bt, ctx: int, scale: float) -> torch.Tensor:
    """Fast fp32 reference for uniform lengths that fill whole pages."""
    b, h, dc = q_lat.shape
    rows = kv[bt.long()].reshape(b, -1, kv.shape[-1])[:, :ctx].float()  # [B, ctx, 576]
    s = torch.einsum("bhd,btd->bht", torch.cat((q_lat, q_pe), -1).float(), rows) * scale
    return torch.einsum("bht,btd->bhd", s.softmax(-1), rows[..., :dc])


def ragged_case(h: int, seed: int = 5):
    """Uneven lengths (1 token, partial pages, several splits' worth) on a shuffled block table, and the checked
    reference `mla_paged_decode_ref`: every configuration must pass this before it is timed."""
    from phase2_mla.mla_decode import mla_paged_decode_ref

    lens, page = RAGGED_LENS, 64
    g = torch.Generator(device=DEV).manual_seed(seed)
    nb = -(-max(lens) // page)
    kv = torch.randn(len(lens) * nb + 3, page, DSV3["dc"] + DSV3["dr"], device=DEV, dtype=DTYPE, generator=g)
    bt = torch.randperm(kv.shape[0], device=DEV, generator=g)[:len(lens) * nb].to(torch.int32).view(len(lens), nb)
    q_lat = torch.randn(len(lens), h, DSV3["dc"], device=DEV, dtype=DTYPE, generator=g)
    q_pe = torch.randn(len(lens), h, DSV3["dr"], device=DEV, dtype=DTYPE, generator=g)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEV)
    args = (q_lat, q_pe, kv, bt, sl, 192 ** -0.5)
    return args, mla_paged_decode_ref(*args).float()


def mla_case(b: int, h: int, ctx: int) -> dict:
    """The timed inputs at (b, h, ctx) (`mla_inputs`), their fp32 reference, the ragged correctness case, and the
    bytes / FLOPs a call moves and does: what sweep_mla and ab_seesaw check and time."""
    q_lat, q_pe, kv, bt, lens = mla_inputs(b, h, ctx)
    scale = 192 ** -0.5
    rag_args, rag_ref = ragged_case(h)
    return {"args": (q_lat, q_pe, kv, bt, lens, scale), "ref": mla_ref_full(q_lat, q_pe, kv, bt, ctx, scale),
            "rag_args": rag_args, "rag_ref": rag_ref, "kv_bytes": b * ctx * kv.shape[-1] * kv.element_size(),
            "flops": 2 * b * h * ctx * (kv.shape[-1] + DSV3["dc"])}


def mla_call(case: dict, cfg: dict, ctx: int):
    """A zero-argument call of mla_paged_decode with `cfg` on the case's timed inputs."""
    from phase2_mla.mla_decode import mla_paged_decode
    return lambda: mla_paged_decode(*case["args"], max_seq_len=ctx, check=False, **cfg)


def check_mla(case: dict, cfg: dict, fn) -> tuple[float, float, bool]:
    """Correctness before timing: the max abs error of the ragged case with cfg (at its split count and at 3) against
    mla_paged_decode_ref, then of fn() (the timed inputs) against the fp32 reference; (err, ragged err, both < 2e-2)."""
    from phase2_mla.mla_decode import mla_paged_decode
    rag = {k: v for k, v in cfg.items() if k != "num_splits"}
    ragged_err = max((mla_paged_decode(*case["rag_args"], num_splits=n, **rag).float() - case["rag_ref"])
                     .abs().max().item() for n in (cfg["num_splits"] or 1, 3))
    err = (fn().float() - case["ref"]).abs().max().item()
    return err, ragged_err, err < 2e-2 and ragged_err < 2e-2


def sweep_mla(b: int, h: int, ctx: int, configs: list[dict], label: str) -> dict:
    case = mla_case(b, h, ctx)
    kv_bytes, flops = case["kv_bytes"], case["flops"]
    rows = []
    for cfg in tqdm(configs, desc=label):
        fn = mla_call(case, cfg, ctx)
        try:  # correctness first (ragged case against mla_paged_decode_ref, then the timed inputs), then time
            err, ragged_err, ok = check_mla(case, cfg, fn)
            ms = graph_ms(fn, inner=5) if ok else float("nan")
            rows.append({**cfg, "ms": ms, "tb_s": kv_bytes / ms / 1e9, "tflops": flops / ms / 1e9, "max_abs_err": err,
                         "ragged_max_abs_err": ragged_err, "correct": ok})
            tqdm.write(f"    {cfg}: {ms * 1e3:.1f} us, {kv_bytes / ms / 1e9:.2f} TB/s, {flops / ms / 1e9:.0f} TFLOP/s,"
                       f" err {err:.4f} / ragged {ragged_err:.4f}{'' if ok else '  WRONG: not timed'}")
        except Exception as e:  # e.g. out of shared memory / registers for a big tile
            rows.append({**cfg, "error": f"{type(e).__name__}: {str(e)[:160]}"})
            tqdm.write(f"    {cfg}: {rows[-1]['error']}")
    ok = [r for r in rows if r.get("correct")]
    best = min(ok, key=lambda r: r["ms"]) if ok else None
    if best:
        tqdm.write(f"  {label}: best {best['ms'] * 1e3:.1f} us = {best['tb_s']:.2f} TB/s, {best['tflops']:.0f} TFLOP/s "
                   f"({ {k: v for k, v in best.items() if k in set().union(*configs)} })")
    return {"batch": b, "heads": h, "ctx": ctx, "page": 64, "kv_bytes": kv_bytes, "flops": flops, "rows": rows,
            "best": best}


def gqa_decode(b: int, hq: int, hkv: int, d: int, ctx: int, page: int = 64) -> dict:
    """Our GQA decode at the same batch / context / query heads: seam kernel (if registered) and SDPA (flash)."""
    g = torch.Generator(device=DEV).manual_seed(1)
    q = torch.randn(b, hq, d, device=DEV, dtype=torch.bfloat16, generator=g)
    kv_bytes = 2 * b * ctx * hkv * d * 2
    out = {"batch": b, "hq": hq, "hkv": hkv, "head_dim": d, "ctx": ctx, "kv_bytes": kv_bytes}
    k = torch.randn(b, hkv, ctx, d, device=DEV, dtype=torch.bfloat16, generator=g)
    v = torch.randn_like(k)
    qg = q.view(b, hkv, hq // hkv, d)  # the G query heads of a KV head act as G query rows: flash runs GQA decode
    ref = F.scaled_dot_product_attention(qg.float(), k.float(), v.float()).reshape(b, hq, d)  # fp32 check
    sdpa = lambda: F.scaled_dot_product_attention(qg, k, v)  # noqa: E731
    out["sdpa"] = {"max_abs_err": (sdpa().float().reshape(b, hq, d) - ref).abs().max().item()}
    ms = graph_ms(sdpa, inner=5)
    out["sdpa"].update(ms=ms, tb_s=kv_bytes / ms / 1e9)
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
        perm = torch.randperm(nblk, device=DEV, generator=g)
        kc, vc = kc[perm.argsort()], vc[perm.argsort()]  # physical block perm[j] holds logical block j
        bt = perm.to(torch.int32).view(b, -1)
        lens = torch.full((b,), ctx, dtype=torch.int32, device=DEV)
        best, out["paged_rows"] = None, []
        for bn, nw in ((32, 4), (64, 4), (32, 8), (64, 8)):
            def fn(bn=bn, nw=nw):
                return paged_decode(q, kc, vc, bt, lens, max_seq_len=ctx, block_n=bn, num_warps=nw)
            try:
                err = (fn().float() - ref).abs().max().item()  # checked against the same fp32 reference first
                ms = graph_ms(fn, inner=5) if err < 2e-2 else float("nan")
            except Exception as e:
                out["paged_rows"].append({"block_n": bn, "num_warps": nw, "error": f"{type(e).__name__}: {e}"[:160]})
                continue
            out["paged_rows"].append({"block_n": bn, "num_warps": nw, "ms": ms, "tb_s": kv_bytes / ms / 1e9,
                                      "max_abs_err": err})
            if err < 2e-2 and (best is None or ms < best["ms"]):
                best = out["paged_rows"][-1]
        out["paged"] = best
    cands = [("sdpa", out["sdpa"])] + ([("paged (seam)", out["paged"])] if out.get("paged") else [])
    src, fastest = min(((n, r) for n, r in cands if r["max_abs_err"] < 2e-2), key=lambda x: x[1]["ms"])
    out["best"] = {"source": src, **fastest}
    tqdm.write(f"  GQA {hq}q/{hkv}kv: sdpa {out['sdpa']['ms'] * 1e3:.1f} us, paged "
               f"{out['paged']['ms'] * 1e3 if out.get('paged') else float('nan'):.1f} us -> best {src}")
    return out


def mla_configs(heads: int) -> list[dict]:
    """The sweep, kept to the configurations the offline register / shared-memory / MMA-shape analysis
    (`kernel_resources.py`, compiled for sm_90a on the CPU) says can win; every one compiles without spills except
    swap_ab 64 x 64 (148 bytes).

    NOTE (why these): with 8 warps Triton lays the score GEMM of a chained dot out as [8 warps, 1] along M, so a
    64-row score tile is computed by BOTH warpgroups (redundant) in narrow m64n16 wgmmas; run 1's best (64 x 32)
    is that. 128-head blocks with the value dims split in halves (dv_split=2: each program keeps a 128 x 256
    accumulator, 236 registers, 200 KB of shared memory) give each warpgroup its own 64 heads of the score GEMM
    (m64n32, no duplicate) and an m64n256 value GEMM; swap_ab puts tokens / value dims on M instead.
    Run 2 (results/bench_mla_h100.json, H100) measured eight 128-head configurations; the sweep now keeps its winner
    (64 x 64, 284 us), the best of the other two layouts, and backend="gluon" (mla_decode_gluon.py: the score tile
    split between the warpgroups and computed once, TMA double buffering), which is the candidate, and its
    pipelined schedule (gluon_schedule="pipelined": the next tile's score wgmma during this tile's softmax) and its
    seesaw schedule (gluon_schedule="seesaw": two warpgroups on alternate tiles, FlashMLA's schedule)."""
    def c(bh, bn, nw, st=2, dv_split=1, swap_ab=False, splits=1, backend="triton"):
        return dict(backend=backend, block_h=bh, block_n=bn, num_warps=nw, num_stages=st, num_splits=splits,
                    dv_split=dv_split, reload_q=False, swap_ab=swap_ab)
    gluon = dict(c(64, 64, 8, splits=None if heads < 64 else 1, backend="gluon"),  # mla_decode_gluon: 64 x 64 x 8
                 gluon_schedule="serial")  # named: the default schedule is seesaw now
    # the same kernel's pipelined schedule (mla_decode_gluon_pipelined: 32-token tiles, next scores during softmax)
    gluon_pipe = dict(gluon, block_n=32, gluon_schedule="pipelined")
    # FlashMLA's seesaw (mla_decode_gluon_seesaw: each warpgroup whole 64 x 64 score tiles of alternate KV tiles)
    gluon_seesaw = dict(gluon, gluon_schedule="seesaw")
    # the same with the latent in 64-column boxes on their own barriers (a score GEMM starts as its first box lands)
    gluon_chunked = dict(gluon, gluon_schedule="seesaw_chunked")
    if heads < 64:
        return [c(16, 64, 8, splits=None), c(16, 64, 4, swap_ab=True, splits=None), gluon, gluon_pipe, gluon_seesaw,
                gluon_chunked]
    return [c(64, 64, 8),  # run 1's best (284 us with 1 split): the reference point, re-measured in the same run
            gluon, gluon_pipe, gluon_seesaw, gluon_chunked, c(128, 32, 8, dv_split=2), c(64, 64, 8, swap_ab=True)]


def split_sweep(best: dict, b: int, h: int, ctx: int, label: str) -> dict:
    """The best configuration again with other split counts (the main sweep uses 1: 128 programs of one SM each)."""
    base = {k: best[k] for k in ("backend", "block_h", "block_n", "num_warps", "num_stages", "dv_split", "reload_q",
                                 "swap_ab", "gluon_schedule") if k in best}
    return sweep_mla(b, h, ctx, [dict(base, num_splits=s) for s in (2, 4) if s != best["num_splits"]], label)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else []
    if "-h" in args or "--help" in args:
        print(__doc__)
        return 0
    for kind in ("gqa", "rope"):  # offline: fold a separately recorded section into results/bench_mla.json
        if f"--merge-{kind}" in args:
            from phase2_mla.bench_merge import main as merge_main
            return merge_main(args[args.index(f"--merge-{kind}") + 1], kind)
    if not torch.cuda.is_available():
        print("bench_mla needs a CUDA GPU (it measures Hopper bandwidth and kernels); the CPU figures come from "
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
    section("summary", lambda: summarize(res, ceil, time.time() - t0))
    print_summary(res)
    return 0


def summarize(res: dict, ceil: float, seconds: float | None) -> dict:
    """The headline figures from the recorded sections; each part is optional (a failed or skipped section leaves
    None). Pure arithmetic on `res`, so `bench_merge` rebuilds it offline (no GPU) when a section is re-measured."""
    bests = [r["best"] for r in (res.get("mla_dsv3") or {}, res.get("mla_dsv3_splits") or {}) if r.get("best")]
    mla_best = min(bests, key=lambda r: r["ms"]) if bests else None
    gq, gq8 = (res.get("gqa_dsv3") or {}).get("best"), (res.get("gqa_tp8") or {}).get("best")
    tp8 = (res.get("mla_tp8") or {}).get("best")
    return {
        "copy_ceiling_tb_s": ceil,
        "rope_decode_pct_of_ceiling": {r["shape"]: max(r["cuda"]["pct_of_copy_ceiling"],
                                                       r["triton"]["pct_of_copy_ceiling"])
                                       for r in res.get("rope", [])},
        "rope_pct_of_same_size_copy": {r["shape"]: max(r["cuda"]["pct_of_same_size_copy"],
                                                       r["triton"]["pct_of_same_size_copy"])
                                       for r in res.get("rope", []) if "pct_of_same_size_copy" in r["cuda"]},
        "mla_dsv3_best": mla_best,
        "mla_dsv3_tb_s": mla_best["tb_s"] if mla_best else None,
        "mla_tb_s": mla_best["tb_s"] if mla_best else None,
        "mla_tflops": mla_best["tflops"] if mla_best else None,
        "mla_us": mla_best["ms"] * 1e3 if mla_best else None,
        "gqa_dsv3_ms": gq["ms"] if gq else None, "gqa_dsv3_source": gq["source"] if gq else None,
        "mla_over_gqa_time": mla_best["ms"] / gq["ms"] if mla_best and gq else None,
        "mla_tp8_best": tp8,
        "gqa_tp8_ms": gq8["ms"] if gq8 else None,
        "mla_tp8_over_gqa_time": tp8["ms"] / gq8["ms"] if tp8 and gq8 else None,
        "seconds": seconds}


def print_summary(res: dict) -> None:
    s = res.get("summary") or {}
    f = lambda x, spec: "n/a" if x is None else format(x, spec)  # noqa: E731
    best = s.get("mla_dsv3_best") or {}
    cfg = {k: best[k] for k in ("backend", "gluon_schedule", "block_h", "block_n", "num_warps", "num_stages",
                                "num_splits", "dv_split", "swap_ab") if k in best}
    print("=" * 100)
    print(f"copy ceiling {f(s.get('copy_ceiling_tb_s'), '.2f')} TB/s | MLA 128 heads B=64 ctx 4K: "
          f"{f(s.get('mla_us'), '.1f')} us, mla_tb_s={f(s.get('mla_tb_s'), '.2f')}, "
          f"TFLOP/s={f(s.get('mla_tflops'), '.0f')}, best {cfg}")
    print(f"GQA-8 best ({s.get('gqa_dsv3_source')}): {f(s.get('gqa_dsv3_ms') and s['gqa_dsv3_ms'] * 1e3, '.1f')} us"
          f" | mla_over_gqa_time={f(s.get('mla_over_gqa_time'), '.2f')} (goal <= 1)"
          f" | TP=8 (16 heads): MLA/GQA {f(s.get('mla_tp8_over_gqa_time'), '.2f')}")
    if s.get("gqa_note"):
        print(s["gqa_note"])
    if res.get("errors"):
        print(f"section errors: {res['errors']}")
    print(f"total {f(s.get('seconds'), '.0f')} s")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
