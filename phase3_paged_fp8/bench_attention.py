"""GPU benchmark of the paged attention kernels; everything in one run, one results JSON.

    TITAN_RESULTS_DIR=$OUT python -m phase3_paged_fp8.bench_attention      # on the H100

Sections (each recorded even if a later one fails): the copy ceiling; a decode config sweep at B=32, ctx 8K,
32q/4kv, d=64 (bf16 and FP8); decode vs gather+SDPA and contiguous SDPA over several shapes; FP8 vs bf16 time and
allocated bytes; a prefill sweep and TFLOP/s vs SDPA; one decode step at 131,072 tokens in a pool past 2^31
elements, checked against the reference; greedy agreement of the paged caches in a bf16 SmolLM2-shaped model.
Timings replay a CUDA graph of one call (launch overhead excluded, as in a serving engine), median of 7 x 20.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common.bench import load_result
from phase3_paged_fp8 import bench_utils as U
from phase3_paged_fp8.bench_utils import (PHASE, RESULTS, best_cfg, copy_ceiling, gather_sdpa, gpu_ms, kv_bytes,
                                          make_paged, section)
from phase3_paged_fp8.cache_write import FP8, SCALE_DTYPE
from phase3_paged_fp8.paged_decode import default_num_splits, gather_kv, paged_decode, paged_decode_ref
from phase3_paged_fp8.paged_prefill import paged_prefill, slot_mapping_for


def decode_sweep(dtype, configs, b, ctx, hq=32, hkv=4, d=64, bs=16):
    kc, vc, ks, vs, bt, lens = make_paged(b, ctx, hkv, d, bs, dtype)
    q = torch.randn(b, hq, d, device=U.DEV, dtype=torch.bfloat16)
    nbytes = kv_bytes(kc, ks, b, ctx)
    rows = []
    for bn, warps, stages, splits in configs:
        row = {"block_n": bn, "num_warps": warps, "num_stages": stages, "num_splits": splits}
        try:
            ms = gpu_ms(lambda: paged_decode(q, kc, vc, bt, lens, ks, vs, num_splits=splits, block_n=bn,
                                             num_warps=warps, num_stages=stages))
            rows.append({**row, "ms": ms, "tb_s": nbytes / ms / 1e9})
        except Exception as e:  # noqa: BLE001 - a config that does not compile is a data point too
            rows.append({**row, "error": str(e)[:200]})
    ok = [r for r in rows if "ms" in r]
    best = min(ok, key=lambda r: r["ms"])
    print("best", best, flush=True)
    return {"shape": dict(b=b, ctx=ctx, hq=hq, hkv=hkv, d=d, block_size=bs, dtype=str(dtype)), "kv_bytes": nbytes,
            "configs": rows, "best": best}


def decode_compare(shapes, hq=32, hkv=4, d=64, bs=16):
    """Triton (best bn/warps/stages, split count: heuristic and best of a few) vs gather+SDPA vs contiguous SDPA."""
    cfg = best_cfg("decode_sweep")
    rows = []
    for b, ctx in shapes:
        kc, vc, ks, vs, bt, lens = make_paged(b, ctx, hkv, d, bs, torch.bfloat16, seed=b + ctx)
        q = torch.randn(b, hq, d, device=U.DEV, dtype=torch.bfloat16)
        nbytes = kv_bytes(kc, ks, b, ctx)
        sms = torch.cuda.get_device_properties(0).multi_processor_count if U.DEV == "cuda" else 4
        heur = default_num_splits(b, hkv, ctx, sms, cfg["block_n"])
        split_ms = {}
        for sp in sorted({1, 2, 4, 8, 16, 32, heur}):
            split_ms[sp] = gpu_ms(lambda: paged_decode(q, kc, vc, bt, lens, num_splits=sp, block_n=cfg["block_n"],
                                                       num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))
        best_sp = min(split_ms, key=split_ms.get)
        out = paged_decode(q, kc, vc, bt, lens, num_splits=heur, block_n=cfg["block_n"], num_warps=cfg["num_warps"],
                           num_stages=cfg["num_stages"])
        err = (out.float() - paged_decode_ref(q, kc, vc, bt, lens).float()).abs().max().item()
        g_ms = gpu_ms(lambda: gather_sdpa(q, kc, vc, ks, vs, bt, ctx))
        kcont = gather_kv(kc, None, bt, ctx, q.dtype).contiguous()  # [B, Hkv, L, D]
        vcont = gather_kv(vc, None, bt, ctx, q.dtype).contiguous()
        q4 = q[:, :, None]
        c_ms = gpu_ms(lambda: F.scaled_dot_product_attention(q4, kcont, vcont, enable_gqa=True))
        row = {"b": b, "ctx": ctx, "kv_bytes": nbytes, "triton_ms_heuristic": split_ms[heur], "heuristic_splits": heur,
               "triton_ms_best": split_ms[best_sp], "best_splits": best_sp, "splits_ms": split_ms,
               "gather_sdpa_ms": g_ms, "contiguous_sdpa_ms": c_ms, "max_abs_err_vs_ref": err,
               "triton_tb_s": nbytes / split_ms[heur] / 1e9, "contiguous_sdpa_tb_s": nbytes / c_ms / 1e9,
               "speedup_vs_gather_sdpa": g_ms / split_ms[heur], "speedup_vs_contiguous_sdpa": c_ms / split_ms[heur]}
        print(row, flush=True)
        rows.append(row)
        del kc, vc, kcont, vcont
    return {"shape": dict(hq=hq, hkv=hkv, d=d, block_size=bs, dtype="bf16"), "block_n": cfg["block_n"],
            "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"], "rows": rows}


def block_size_sweep(sizes, b, ctx, hq=32, hkv=4, d=64):
    cfg = best_cfg("decode_sweep")
    rows = []
    for bs in sizes:
        kc, vc, ks, vs, bt, lens = make_paged(b, ctx, hkv, d, bs, torch.bfloat16)
        q = torch.randn(b, hq, d, device=U.DEV, dtype=torch.bfloat16)
        ms = gpu_ms(lambda: paged_decode(q, kc, vc, bt, lens, num_splits=cfg["num_splits"], block_n=cfg["block_n"],
                                         num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))
        rows.append({"block_size": bs, "ms": ms, "tb_s": kv_bytes(kc, ks, b, ctx) / ms / 1e9})
        print(rows[-1], flush=True)
    return rows


def fp8_vs_bf16(b, ctx, hq=32, hkv=4, d=64, bs=16):
    out = {}
    for name, dt, key in (("bf16", torch.bfloat16, "decode_sweep"), ("fp8", FP8, "decode_sweep_fp8")):
        kc, vc, ks, vs, bt, lens = make_paged(b, ctx, hkv, d, bs, dt)
        alloc = sum(t.untyped_storage().nbytes() for t in (kc, vc, ks, vs) if t is not None)  # the pool, as allocated
        cfg = best_cfg(key)
        q = torch.randn(b, hq, d, device=U.DEV, dtype=torch.bfloat16)
        ms = gpu_ms(lambda: paged_decode(q, kc, vc, bt, lens, ks, vs, num_splits=cfg["num_splits"],
                                         block_n=cfg["block_n"], num_warps=cfg["num_warps"],
                                         num_stages=cfg["num_stages"]))
        out[name] = {"allocated_bytes": alloc, "kv_bytes": kv_bytes(kc, ks, b, ctx), "ms": ms,
                     "tb_s": kv_bytes(kc, ks, b, ctx) / ms / 1e9, "config": cfg,
                     "max_abs_err_vs_ref": (paged_decode(q, kc, vc, bt, lens, ks, vs).float()
                                            - paged_decode_ref(q, kc, vc, bt, lens, ks, vs).float()).abs().max().item()}
        del kc, vc, ks, vs
    out["bytes_ratio"] = out["fp8"]["allocated_bytes"] / out["bf16"]["allocated_bytes"]
    out["memory_saving"] = 1 - out["bytes_ratio"]
    out["speedup"] = out["bf16"]["ms"] / out["fp8"]["ms"]
    return out


def prefill(configs, b, s, hq=32, hkv=4, d=64, bs=16, prefix=0):
    gen = torch.Generator(device=U.DEV).manual_seed(0)
    ctx = prefix + s
    kc, vc, ks, vs, bt, lens = make_paged(b, ctx, hkv, d, bs, torch.bfloat16)
    q = torch.randn(b * s, hq, d, device=U.DEV, dtype=torch.bfloat16, generator=gen)
    k = torch.randn(b * s, hkv, d, device=U.DEV, dtype=torch.bfloat16, generator=gen)
    v = torch.randn(b * s, hkv, d, device=U.DEV, dtype=torch.bfloat16, generator=gen)
    ql = torch.full((b,), s, dtype=torch.int32, device=U.DEV)
    cu = torch.arange(0, b * s + 1, s, dtype=torch.int32, device=U.DEV)
    slots = slot_mapping_for(bt, lens, ql, bs)
    flops = 4 * b * hq * d * (s * prefix + s * (s + 1) / 2)  # QK^T and PV over the visible keys
    rows = []
    for bm, bn, warps, stages in configs:
        try:
            ms = gpu_ms(lambda: paged_prefill(q, k, v, cu, lens, bt, kc, vc, slots, max_q_len=s, block_m=bm,
                                              block_n=bn, num_warps=warps, num_stages=stages), reps=5, rounds=5)
            rows.append({"block_m": bm, "block_n": bn, "num_warps": warps, "num_stages": stages, "ms": ms,
                         "tflops": flops / ms / 1e9})
        except Exception as e:  # noqa: BLE001
            rows.append({"block_m": bm, "block_n": bn, "num_warps": warps, "num_stages": stages, "error": str(e)[:200]})
    best = min((r for r in rows if "ms" in r), key=lambda r: r["ms"])
    # SDPA on contiguous tensors (FlashAttention-2 backend), same causal work
    qs = q.view(b, s, hq, d).transpose(1, 2)
    kk = gather_kv(kc, None, bt, ctx, q.dtype).repeat_interleave(hq // hkv, 1).contiguous()
    vv = gather_kv(vc, None, bt, ctx, q.dtype).repeat_interleave(hq // hkv, 1).contiguous()
    if prefix == 0:
        sdpa_ms = gpu_ms(lambda: F.scaled_dot_product_attention(qs, kk, vv, is_causal=True), reps=5, rounds=5)
    else:
        mask = torch.ones(s, ctx, dtype=torch.bool, device=U.DEV).tril(prefix)  # query i sees keys <= prefix + i
        sdpa_ms = gpu_ms(lambda: F.scaled_dot_product_attention(qs, kk, vv, attn_mask=mask), reps=5, rounds=5)
    print("prefill best", best, "sdpa", sdpa_ms, flush=True)
    return {"shape": dict(b=b, new_tokens=s, prefix=prefix, hq=hq, hkv=hkv, d=d, block_size=bs), "flops": flops,
            "configs": rows, "best": best, "sdpa_ms": sdpa_ms, "sdpa_tflops": flops / sdpa_ms / 1e9,
            "ratio_vs_sdpa": sdpa_ms / best["ms"]}


def ctx_128k(ctx=131072, hq=32, hkv=8, d=128, bs=16, past_2g=True):
    """One decode step at 128K tokens whose blocks sit past element 2^31 of the pool: int64 offsets or garbage."""
    nblk = ctx // bs
    first = 2**31 // (bs * hkv * d) if past_2g else 0  # first block whose element offset is >= 2^31
    pool = first + nblk + 64
    out = {"ctx": ctx, "hq": hq, "hkv": hkv, "d": d, "pool_blocks": pool, "pool_elements": pool * bs * hkv * d}
    gen = torch.Generator(device=U.DEV).manual_seed(7)
    for name, dt in (("bf16", torch.bfloat16), ("fp8", FP8)):
        kc = torch.empty(pool, bs, hkv, d, device=U.DEV, dtype=dt)
        vc = torch.empty_like(kc)
        ks = vs = None
        ids = first + torch.randperm(pool - first, device=U.DEV, generator=gen)[:nblk]
        bt = ids.view(1, nblk).to(torch.int32)
        kn = torch.randn(nblk, bs, hkv, d, device=U.DEV, dtype=torch.bfloat16, generator=gen)
        vn = torch.randn(nblk, bs, hkv, d, device=U.DEV, dtype=torch.bfloat16, generator=gen)
        if dt == FP8:
            ks = torch.ones(pool, bs, hkv, device=U.DEV, dtype=SCALE_DTYPE)
            vs = torch.ones_like(ks)
            ks[ids] = (kn.float().abs().amax(-1) / 448).to(SCALE_DTYPE)
            vs[ids] = (vn.float().abs().amax(-1) / 448).to(SCALE_DTYPE)
            kn, vn = kn.float() / ks[ids].float()[..., None], vn.float() / vs[ids].float()[..., None]
        bits = (lambda t: t.view(torch.uint8)) if dt == FP8 else (lambda t: t)  # noqa: E731 index_put on raw bytes
        bits(kc)[ids], bits(vc)[ids] = bits(kn.to(dt)), bits(vn.to(dt))
        del kn, vn
        lens = torch.tensor([ctx], dtype=torch.int32, device=U.DEV)
        q = torch.randn(1, hq, d, device=U.DEV, dtype=torch.bfloat16, generator=gen)
        cfg = best_cfg("decode_sweep" if dt != FP8 else "decode_sweep_fp8")
        kw = dict(block_n=cfg["block_n"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        ref = paged_decode_ref(q, kc, vc, bt, lens, ks, vs)
        split_ms = {}
        for sp in (16, 32, 64, 128) if U.DEV == "cuda" else (2,):
            split_ms[sp] = gpu_ms(lambda: paged_decode(q, kc, vc, bt, lens, ks, vs, num_splits=sp, **kw),
                                  reps=10, rounds=5)
        sp = min(split_ms, key=split_ms.get)
        got = paged_decode(q, kc, vc, bt, lens, ks, vs, num_splits=sp, **kw)
        nbytes = kv_bytes(kc, ks, 1, ctx)
        out[name] = {"max_abs_err_vs_ref": (got.float() - ref.float()).abs().max().item(),
                     "correct": bool(torch.allclose(got.float(), ref.float(), atol=2e-2, rtol=2e-2)),
                     "splits_ms": split_ms, "best_splits": sp, "ms": split_ms[sp], "kv_bytes": nbytes, "config": kw,
                     "tb_s": nbytes / split_ms[sp] / 1e9}
        print(name, out[name], flush=True)
        del kc, vc, ks, vs, ref
        torch.cuda.empty_cache()
    return out


def engine(steps=48, batch=4, prompt=64, num_layers=None):
    """bf16 SmolLM2-shaped model (random weights: the GGUF cannot travel): paged caches vs contiguous, greedy."""
    from common.kv_cache import ContiguousKVCache
    from common.model_loader import load_model
    from phase3_paged_fp8.paged_cache import PagedKVCache, greedy_generate
    lm = load_model("smollm2-135m", random_weights=True, device=U.DEV, dtype="bf16" if U.DEV == "cuda" else "fp32",
                    num_layers=num_layers)
    ids = torch.randint(0, lm.config.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(0)).to(U.DEV)
    n = prompt + steps + 1
    want = greedy_generate(lm.model, ids, steps, ContiguousKVCache(lm.config, batch, n, lm.dtype, U.DEV))
    out = {"note": "random weights: near-tied logits, so bf16 rounding differences flip argmaxes; the fp32 model "
                   "(ieee dots) is the exactness check, prefill_logits_* size the bf16 difference"}
    with torch.no_grad():
        ref_logits = lm.model(ids, cache=ContiguousKVCache(lm.config, batch, n, lm.dtype, U.DEV)).float()
    for dt in ("bf16", "fp8"):
        cache = PagedKVCache(lm.config, batch, n, block_size=16, dtype=dt, device=U.DEV, backend="triton")
        got = greedy_generate(lm.model, ids, steps, cache)
        with torch.no_grad():
            lg = lm.model(ids, cache=PagedKVCache(lm.config, batch, n, dtype=dt, device=U.DEV, backend="triton")).float()
        out[dt] = {"token_agreement": (got == want).float().mean().item(), "identical": bool(torch.equal(got, want)),
                   "first_divergence": [int((r != w).nonzero()[0]) if (r != w).any() else None
                                        for r, w in zip(got, want)], "tables": cache.tables_source,
                   "prefill_logits_max_abs_diff": (lg - ref_logits).abs().max().item(),
                   "prefill_logits_std": ref_logits.std().item(),
                   "prefill_argmax_agreement": (lg.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()}
    del lm
    if U.DEV == "cuda":  # the same model in fp32: paged (Triton, ieee fp32 dots) must equal contiguous token for token
        lm = load_model("smollm2-135m", random_weights=True, device=U.DEV, dtype="fp32", num_layers=num_layers)
        want = greedy_generate(lm.model, ids, steps, ContiguousKVCache(lm.config, batch, n, lm.dtype, U.DEV))
        got = greedy_generate(lm.model, ids, steps, PagedKVCache(lm.config, batch, n, dtype="fp32", device=U.DEV))
        out["fp32"] = {"identical": bool(torch.equal(got, want)), "token_agreement": (got == want).float().mean().item()}
    return out


def main(argv=None) -> int:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated sections to (re)run; the others are kept from the "
                    "committed results/attention_h100.json (each section records the run that measured it)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU under TRITON_INTERPRET=1 (checks the "
                    "script itself; its numbers mean nothing and go to attention_smoke.json)")
    args = ap.parse_args(argv)
    if args.smoke:
        U.DEV, U.RESULT_NAME = "cpu", "attention_smoke"
        b, ctx, sweep_splits, shapes, pre_s = 2, 64, (1, 2), [(2, 64)], 32
        dec = [(16, 4, 2, sp) for sp in sweep_splits]
        pre = [(16, 16, 4, 2)]
    elif not torch.cuda.is_available():
        raise SystemExit("bench_attention needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1 on a CPU)")
    else:
        b, ctx, pre_s = 32, 8192, 4096
        shapes = [(1, 4096), (8, 4096), (32, 4096), (32, 8192), (8, 32768), (64, 2048)]
        warps = {32: (2, 4), 64: (4, 8), 128: (4, 8)}  # compiles dominate the run: skip the unlikely corners
        dec = [(bn, w, st, sp) for bn in (32, 64, 128) for w in warps[bn] for st in (2, 3) for sp in (1, 2, 4, 8, 16)]
        pre = [(bm, bn, w, st) for bm in (64, 128) for bn in ((32, 64) if bm == 64 else (32, 64, 128))
               for w in ((4,) if bm == 64 else (4, 8)) for st in (2, 3)]
    RESULTS["device"] = torch.cuda.get_device_name(0) if U.DEV == "cuda" else "cpu (interpreter smoke test)"
    only = set(filter(None, args.only.split(",")))
    if only:
        old = load_result(PHASE, U.RESULT_NAME) or {}
        for k, v in old.items():
            if k not in ("provenance", "device"):
                RESULTS[k] = v
                if isinstance(v, dict) and "run" not in v:
                    v["run"] = {"date": old["provenance"]["date"], "commit": old["provenance"]["commit"]}

    def sec(name, fn, *a, **k):  # a section, unless --only leaves it out
        return RESULTS.get(name) if only and name not in only else section(name, fn, *a, **k)

    # most important first: every section rewrites the JSON, so a run cut short still returns what it measured
    sec("copy_ceiling", copy_ceiling)
    sec("decode_sweep", decode_sweep, torch.bfloat16, dec, b, ctx)
    sec("decode_compare", decode_compare, shapes)
    fp8_cfgs = [c for c in dec if c[0] >= 64 and c[3] in (2, 4, 8)] if U.DEV == "cuda" else dec
    sec("decode_sweep_fp8", decode_sweep, FP8, fp8_cfgs, b, ctx)
    sec("fp8_vs_bf16", fp8_vs_bf16, b, ctx)
    if U.DEV == "cuda":
        sec("ctx_128k", ctx_128k)
    else:
        sec("ctx_128k", ctx_128k, ctx=96, hq=4, hkv=2, d=16, bs=16, past_2g=False)
    sec("prefill", prefill, pre, 4 if U.DEV == "cuda" else 2, pre_s)
    best = RESULTS["prefill"].get("best", {})
    sec("prefill_prefix", prefill, [tuple(best.get(k, v) for k, v in (("block_m", 64), ("block_n", 64),
                                                                          ("num_warps", 4), ("num_stages", 2)))],
            4 if U.DEV == "cuda" else 2, pre_s // 2, prefix=pre_s // 2)
    if U.DEV == "cuda":
        sec("engine", engine)
    else:
        sec("engine", engine, steps=3, batch=2, prompt=5, num_layers=1)
    sec("block_size", block_size_sweep, [8, 16, 32] if U.DEV == "cuda" else [8], b, ctx)
    errors = [k for k, v in RESULTS.items() if isinstance(v, dict) and "error" in v]
    print("sections with errors:", errors or "none")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
