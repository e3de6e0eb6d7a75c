"""GPU check + microbenchmark of the fused kernels and of one whole decode step (TinyLlama-1.1B shapes, bf16).

    PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TITAN_RESULTS_DIR=$OUT python3 -m phase4_scheduler.bench_fused [--only ...]

Order: (1) every kernel against its reference on fresh random inputs at the real shapes; (2) each kernel vs its
PyTorch/cuBLAS equivalent, timed inside one CUDA graph of many calls, cycling through enough weight copies that
nothing is served from the 50 MB L2; (3) a whole decode step at B=1 and B=64 under CUDA graphs: the reference
model, the fused model with cuBLAS projections, the fused model with the skinny GEMM. Attention in (3) is the same
static-cache context for every variant (KVStub below: a [L, B, Hkv, S, D] buffer, the step's key written at a
device-side position, masked softmax over S=256 slots), so the differences are the non-attention work.
Each section is guarded: a failure is recorded and the others still run. Writes results/fused_kernels_gpu.json.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

from common.bench import write_result
from common.config import PRESETS
from phase4_scheduler import skinny_gemm as sg

MODEL = "tinyllama-1.1b"
CFG = PRESETS[MODEL]
HIDDEN, INTER, HQ, HKV, D = (CFG.hidden_size, CFG.intermediate_size, CFG.num_attention_heads,
                             CFG.num_key_value_heads, CFG.head_dim)
SHAPES = {"qkv": ((HQ + 2 * HKV) * D, HIDDEN), "o": (HIDDEN, HQ * D), "gate_up": (2 * INTER, HIDDEN),
          "down": (HIDDEN, INTER), "lm_head": (CFG.vocab_size, HIDDEN)}  # name: (N, K) = 2560x2048, ..., 32000x2048
DEV = "cuda"
BATCHES = (1, 16, 64)  # 16: the largest step the skinny GEMM takes (tensor-core path); 64: cuBLAS
SWEEP_BATCHES = (2, 4, 8)  # with 1 and 16: the skinny-vs-cuBLAS threshold sweep of a whole decode step
L2_BYTES = 256 * 2**20  # rotate through at least this many bytes of weights per timed pass


def graph_ms(fns, reps: int = 10) -> float:
    """Median ms of ONE call, timing a CUDA graph that runs every fn in `fns` once (warm-up outside capture)."""
    for f in fns:
        f()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns:
            f()
    g.replay()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / len(fns))
    return statistics.median(times)


def check_kernels(fk, out: dict) -> None:
    """Kernel vs reference at TinyLlama shapes: records {name: max abs error}, raises on a mismatch."""
    dev, bf = DEV, torch.bfloat16
    for t in (1, 64):
        x, r = torch.randn(t, HIDDEN, device=dev, dtype=bf), torch.randn(t, HIDDEN, device=dev, dtype=bf)
        w = torch.randn(HIDDEN, device=dev, dtype=bf) + 1
        y, rr = fk.rms_norm(x, w, 1e-5, r)
        y_ref, rr_ref = fk.rms_norm_ref(x, w, 1e-5, r)
        out[f"residual_bitwise_equal_T{t}"] = torch.equal(rr, rr_ref)  # the add should round exactly like torch's
        torch.testing.assert_close(rr, rr_ref, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(fk.rms_norm(x, w, 1e-5), fk.rms_norm_ref(x, w, 1e-5), rtol=2e-2, atol=2e-2)
        out[f"rms_norm_T{t}"] = (y.float() - y_ref.float()).abs().max().item()
        gu = torch.randn(t, 2 * INTER, device=dev, dtype=bf) * 3
        torch.testing.assert_close(fk.silu_mul(gu), fk.silu_mul_ref(gu), rtol=2e-2, atol=2e-2)
        out[f"silu_mul_T{t}"] = (fk.silu_mul(gu).float() - fk.silu_mul_ref(gu).float()).abs().max().item()
        cache = fk.make_cos_sin_cache(CFG, 2048, dev)
        qkv = torch.randn(t, (HQ + 2 * HKV) * D, device=dev, dtype=bf)
        pos = torch.randint(0, 2048, (t,), device=dev)
        got, want = fk.rope_qk(qkv.clone(), pos, cache, HQ, HKV, D), fk.rope_qk_ref(qkv, pos, cache, HQ, HKV, D)
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
        out[f"rope_qk_T{t}"] = (got.float() - want.float()).abs().max().item()
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device=dev, dtype=bf) / math.sqrt(k)
        for m in (1, 4, 16):
            x = torch.randn(m, k, device=dev, dtype=bf)
            got, want = sg.linear_small_m(x, w).float(), F.linear(x.float(), w.float())
            torch.testing.assert_close(got, want, rtol=2e-2, atol=3e-2)
            out[f"linear_{name}_M{m}"] = (got - want).abs().max().item()
    for name, mode in (("qkv", "norm"), ("gate_up", "norm"), ("down", "silu")):
        n, k = SHAPES[name]
        w = torch.randn(n, k, device=dev, dtype=bf) / math.sqrt(k)
        nw = torch.randn(k, device=dev, dtype=bf) + 1
        for m in (1, 4):
            if mode == "norm":
                x, r = torch.randn(m, k, device=dev, dtype=bf), torch.randn(m, k, device=dev, dtype=bf)
                got, rr = sg.norm_linear(x, nw, 1e-5, w, r)
                y, rr_want = fk.rms_norm_ref(x, nw, 1e-5, r)
                torch.testing.assert_close(rr, rr_want, rtol=1e-2, atol=1e-2)
                want = F.linear(y.float(), w.float())
            else:
                gu = torch.randn(m, 2 * k, device=dev, dtype=bf)
                got, want = sg.silu_mul_linear(gu, w), F.linear(fk.silu_mul_ref(gu).float(), w.float())
            torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=3e-2)
            out[f"{mode}_linear_{name}_M{m}"] = (got.float() - want).abs().max().item()
            if name == "qkv":  # and with RoPE in the epilogue (opt-in: its failure is recorded, not fatal)
                guarded(out, f"norm_linear_rope_qkv_M{m}", lambda: check_rope_epilogue(fk, x, nw, w, r, want))
    for dt in (torch.float32, torch.float16):  # other dtypes: one shape, fixed tiles (no tuning run)
        w, x1, x8 = (torch.randn(*s, device=dev, dtype=dt) for s in ((512, 2048), (1, 2048), (8, 2048)))
        for x in (x1, x8):
            torch.testing.assert_close(sg.linear_small_m(x, w, tune=False).float(), F.linear(x.float(), w.float()),
                                       **({"rtol": 1e-2, "atol": 5e-2} if dt == torch.float16 else
                                          {"rtol": 1e-4, "atol": 1e-3}))
        xx = torch.randn(3, HIDDEN, device=dev, dtype=dt)
        torch.testing.assert_close(fk.rms_norm(xx, xx[0], 1e-5), fk.rms_norm_ref(xx, xx[0], 1e-5), rtol=1e-2, atol=1e-2)
    out["fp32_fp16_linear_and_norm"] = "ok"


def guarded(res: dict, key: str, fn) -> None:
    """res[key] = fn(), or the error's text: for the opt-in RoPE epilogue, so a failure there loses nothing else."""
    try:
        res[key] = fn()
    except Exception as e:
        traceback.print_exc()
        res[key] = f"failed: {type(e).__name__}: {e}"


def check_rope_epilogue(fk, x, nw, w, r, want_qkv) -> float:
    cache = fk.make_cos_sin_cache(CFG, 2048, DEV)
    pos = torch.randint(0, 2048, (x.shape[0],), device=DEV)
    got, _ = sg.norm_linear_rope(x, nw, 1e-5, w, pos, cache, HQ, HKV, D, r)
    want = fk.rope_qk_ref(want_qkv, pos, cache, HQ, HKV, D)
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=3e-2)
    return (got.float() - want).abs().max().item()


def time_kernels(fk, res: dict) -> None:
    """Each projection: skinny GEMM vs cuBLAS at M=1 and 16; norm/silu/rope vs their PyTorch references at T=1/64."""
    dev, bf = DEV, torch.bfloat16
    for name, (n, k) in SHAPES.items():
        nbytes = n * k * 2
        ws = [torch.randn(n, k, device=dev, dtype=bf) for _ in range(max(2, math.ceil(L2_BYTES / nbytes)))]
        for m in (1, 16):
            x = torch.randn(m, k, device=dev, dtype=bf)
            sg.linear_small_m(x, ws[0])  # autotune outside the graph
            t_sk = graph_ms([lambda w=w: sg.linear_small_m(x, w) for w in ws])
            t_cb = graph_ms([lambda w=w: F.linear(x, w) for w in ws])
            res[f"{name}_M{m}"] = {"N": n, "K": k, "skinny_ms": t_sk, "cublas_ms": t_cb,
                                   "skinny_TBps": nbytes / t_sk / 1e9, "cublas_TBps": nbytes / t_cb / 1e9}
            print(f"  {name:8s} M={m:2d}  skinny {t_sk * 1e3:7.1f} us ({nbytes / t_sk / 1e9:4.2f} TB/s)   "
                  f"cuBLAS {t_cb * 1e3:7.1f} us ({nbytes / t_cb / 1e9:4.2f} TB/s)")
        del ws
    for name, mode in (("qkv", "norm"), ("gate_up", "norm"), ("down", "silu")):
        n, k = SHAPES[name]
        ws = [torch.randn(n, k, device=dev, dtype=bf) for _ in range(max(2, math.ceil(L2_BYTES / (n * k * 2))))]
        nw = torch.randn(k, device=dev, dtype=bf)
        x, r, gu = (torch.randn(1, c, device=dev, dtype=bf) for c in (k, k, 2 * k))
        cache = fk.make_cos_sin_cache(CFG, 2048, dev)
        pos = torch.tensor([1000], device=dev)
        if mode == "norm":
            variants = {"one_kernel": lambda w: sg.norm_linear(x, nw, 1e-5, w, r),
                        "two_kernels": lambda w: sg.linear_small_m(fk.rms_norm(x, nw, 1e-5, r)[0], w),
                        "torch": lambda w: F.linear(fk.rms_norm_ref(x, nw, 1e-5, r)[0], w)}
        else:
            variants = {"one_kernel": lambda w: sg.silu_mul_linear(gu, w),
                        "two_kernels": lambda w: sg.linear_small_m(fk.silu_mul(gu), w),
                        "torch": lambda w: F.linear(fk.silu_mul_ref(gu), w)}
        if name == "qkv":
            variants |= {"with_rope_one_kernel": lambda w: sg.norm_linear_rope(x, nw, 1e-5, w, pos, cache, HQ, HKV,
                                                                               D, r),
                         "with_rope_two_kernels": lambda w: fk.rope_qk(sg.norm_linear(x, nw, 1e-5, w, r)[0], pos,
                                                                       cache, HQ, HKV, D)}
        row = res[f"{mode}+{name}_M1"] = {}
        for label, fn in variants.items():
            def timed(fn=fn):
                fn(ws[0])
                return graph_ms([lambda w=w: fn(w) for w in ws]) * 1e3
            guarded(row, f"{label}_us", timed)
        print(f"  {mode}+{name:8s} M=1  " + "   ".join(f"{k_} {v}" for k_, v in row.items()))
        del ws
    cache = fk.make_cos_sin_cache(CFG, 2048, dev)
    for t in (1, 64):
        x, r = torch.randn(t, HIDDEN, device=dev, dtype=bf), torch.randn(t, HIDDEN, device=dev, dtype=bf)
        w = torch.randn(HIDDEN, device=dev, dtype=bf)
        gu = torch.randn(t, 2 * INTER, device=dev, dtype=bf)
        qkv = torch.randn(t, (HQ + 2 * HKV) * D, device=dev, dtype=bf)
        pos = torch.randint(0, 2048, (t,), device=dev)
        pairs = {"add_rms_norm": (lambda: fk.rms_norm(x, w, 1e-5, r), lambda: fk.rms_norm_ref(x, w, 1e-5, r)),
                 "silu_mul": (lambda: fk.silu_mul(gu), lambda: fk.silu_mul_ref(gu)),
                 "rope_qk": (lambda: fk.rope_qk(qkv, pos, cache, HQ, HKV, D),
                             lambda: fk.rope_qk_ref(qkv, pos, cache, HQ, HKV, D))}
        for name, (fused, ref) in pairs.items():
            a, b = graph_ms([fused] * 50), graph_ms([ref] * 50)
            res[f"{name}_T{t}"] = {"fused_us": a * 1e3, "torch_us": b * 1e3}
            print(f"  {name:12s} T={t:2d}  fused {a * 1e3:6.1f} us   torch {b * 1e3:6.1f} us")


class KVStub:
    """Static KV cache for graph capture: attend() writes the step's k, v at slot `pos` (a device tensor) and runs a
    masked softmax over all S slots. Used identically by the reference and the fused model."""

    def __init__(self, layers: int, batch: int, slots: int, dev, dtype):
        self.k = torch.randn(layers, batch, HKV, slots, D, device=dev, dtype=dtype)
        self.v = torch.randn_like(self.k)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.slots = torch.arange(slots, device=dev)
        self.seq_len = 0

    def attend(self, layer, q, k, v):  # q [B, Hq, 1, D]; k, v [B, Hkv, 1, D]
        self.k[layer].index_copy_(2, self.pos, k)
        self.v[layer].index_copy_(2, self.pos, v)
        b = q.shape[0]
        qg = q.reshape(b, HKV, HQ // HKV, D)  # [B, Hkv, G, D]
        s = torch.matmul(qg, self.k[layer].transpose(-1, -2)) / math.sqrt(D)  # [B, Hkv, G, S]
        s = s.masked_fill(self.slots > self.pos, float("-inf"))
        o = torch.matmul(torch.softmax(s.float(), -1).to(q.dtype), self.v[layer])  # [B, Hkv, G, D]
        return o.reshape(b, HQ, 1, D)

    def advance(self, n):
        pass


def time_steps(fk, res: dict) -> None:
    from common.model_loader import load_model
    from phase4_scheduler.fused_model import fuse_model

    dev = torch.device(DEV)
    loaded = load_model(MODEL, device=DEV, dtype=torch.bfloat16, random_weights=True)
    model = loaded.model
    wbytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed" not in n)
    res["weight_bytes_per_token"] = wbytes
    ctxs = {b: KVStub(CFG.num_hidden_layers, b, 256, dev, torch.bfloat16) for b in BATCHES + SWEEP_BATCHES}
    for c in ctxs.values():
        c.pos.fill_(200)

    def step_ms(net, b):
        ids = torch.randint(0, CFG.vocab_size, (b, 1), device=dev)
        pos = torch.full((b, 1), 200, device=dev)
        with torch.inference_mode():
            return graph_ms([lambda: net(ids, pos, ctxs[b])], reps=20)

    def record(label, b, ms):
        res[f"{label}_B{b}_ms"] = ms
        print(f"  {label:22s} B={b:2d}: {ms:.3f} ms/step  (weights at {wbytes / ms / 1e9:.2f} TB/s)")

    for b in BATCHES:
        record("reference", b, step_ms(model, b))
    with torch.inference_mode():
        ids = torch.randint(0, CFG.vocab_size, (1, 5), device=dev)
        ref_logits = model(ids).float()
    fused = fuse_model(model)  # consumes `model`
    del model, loaded
    fused.warmup()
    with torch.inference_mode():
        err = (fused(ids).float() - ref_logits).abs().max().item()
    res["fused_vs_reference_max_abs_logit_diff"] = err
    print(f"  fused vs reference logits (bf16, 5-token prefill): max |diff| {err:.3g}")
    for b in BATCHES:
        record("fused", b, step_ms(fused, b))
    saved = sg.SKINNY_MAX_M
    try:
        sg.SKINNY_MAX_M = 0  # every projection through cuBLAS: the gain of the elementwise fusions alone
        record("fused_cublas", 1, step_ms(fused, 1))
    finally:
        sg.SKINNY_MAX_M = saved
    fused.ops.prologues = False  # skinny GEMMs, but norm and silu_mul as their own kernels
    try:
        record("fused_no_prologues", 1, step_ms(fused, 1))
    finally:
        fused.ops.prologues = True
    # where the skinny path should stop: each small batch through skinny+prologues, skinny alone, and cuBLAS
    for b in SWEEP_BATCHES + (16,):
        if b not in BATCHES:
            record("fused", b, step_ms(fused, b))
        fused.ops.prologues = False
        try:
            record("fused_no_prologues", b, step_ms(fused, b))
        finally:
            fused.ops.prologues = True
        sg.SKINNY_MAX_M = 0
        try:
            record("fused_cublas", b, step_ms(fused, b))
        finally:
            sg.SKINNY_MAX_M = saved
    guarded(res, "kernels_per_step_B1", lambda: count_kernels(fused, ctxs[1]))

    def rope_epilogue():  # RoPE in the qkv GEMM's epilogue too (4 launches + attention per layer); opt-in
        fused.warmup()
        with torch.inference_mode():
            err = (fused(ids).float() - ref_logits).abs().max().item()
        print(f"  fused (rope epilogue) vs reference logits: max |diff| {err:.3g}")
        guarded(res, "kernels_per_step_B1_rope_epilogue", lambda: count_kernels(fused, ctxs[1]))
        for b in [b for b in BATCHES if b <= sg.SKINNY_MAX_M]:
            record("fused_rope_epilogue", b, step_ms(fused, b))
        return err

    fused.ops.rope_epilogue = True
    try:
        guarded(res, "fused_rope_epilogue_vs_reference_max_abs_logit_diff", rope_epilogue)
    finally:
        fused.ops.rope_epilogue = False


def count_kernels(fused, ctx) -> int:
    """CUDA kernels one eager B=1 step launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    ids = torch.zeros(1, 1, dtype=torch.long, device=DEV)
    pos = torch.full((1, 1), 200, device=DEV)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        fused(ids, pos, ctx)
        torch.cuda.synchronize()
    n = sum(e.count for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA)
    print(f"  fused model, one eager B=1 step: {n} CUDA kernels")
    return n


def main(argv: list[str] | None = None) -> int:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--only", default="correctness,kernels,decode_step",
                    help="comma-separated sections to run (default: all three, in order)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs CUDA")
        return 1
    from phase4_scheduler import fused_kernels as fk

    torch.manual_seed(0)
    sections = {"correctness": check_kernels, "kernels": time_kernels, "decode_step": time_steps}
    results, failed = {"seconds": {}}, []
    for name in args.only.split(","):
        print(f"== {name}")
        t0, results[name] = time.perf_counter(), {}
        try:
            sections[name](fk, results[name])
        except Exception as e:  # keep going: one broken section must not lose the others
            traceback.print_exc()
            results[name]["error"] = f"{type(e).__name__}: {e}"
            failed.append(name)
        results["seconds"][name] = round(time.perf_counter() - t0, 1)
        print(f"   ({results['seconds'][name]} s)")
        torch.cuda.empty_cache()
    results["tuned_tiles"] = {f"{kernel.fn.__name__}{key}": str(cfg) for kernel in (sg.skinny_gemv_tuned,
                              sg.skinny_gemm_tuned) for key, cfg in kernel.cache.items()}
    write_result("phase4_scheduler", "fused_kernels_gpu", results)
    summary(results, failed)
    return 1 if failed else 0


def summary(results: dict, failed: list[str]) -> None:
    print("== summary")
    print(f"  sections failed: {failed or 'none'}; seconds {results['seconds']}")
    rows = {k: v for k, v in results.get("kernels", {}).items() if isinstance(v, dict)}
    for key, v in rows.items():
        if "skinny_TBps" in v:
            print(f"  {key:12s} skinny {v['skinny_TBps']:.2f} TB/s vs cuBLAS {v['cublas_TBps']:.2f} TB/s")
        else:
            print(f"  {key:16s} " + "  ".join(f"{n} {x:.1f}" if isinstance(x, float) else f"{n} {x}"
                                               for n, x in v.items()))
    d = results.get("decode_step", {})
    for key in [k for k in d if k.endswith("_ms") and isinstance(d[k], float)]:
        print(f"  {key:26s} {d[key]:.3f} ms")


if __name__ == "__main__":
    sys.exit(main())
