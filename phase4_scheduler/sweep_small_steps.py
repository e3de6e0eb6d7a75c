"""GPU: which tile / warps / stages / split count the kernels of SMALL serving steps want, over the bf16 pool and
phase 3's FP8 pool, at ShareGPT-like contexts (TinyLlama heads: 32 q / 4 KV x 64, 16-token blocks):

- the fused decode attention (decode_attention.py: decode-only steps below 128 sequences), whose launch plan is
  phase 3's decode_plan, tuned on bf16 -- over FP8 it ran 14.0 us a layer at B=32 / 260 tokens against bf16's 10.2
  (H100, decode_attention_fp8_s1207b_h100.json);
- phase 3's paged prefill kernel as steps carrying a prompt run it (every row packed, the decodes too): over FP8
  83.7 us a layer against bf16's 51.4 at 300 decodes + 2 prompts (mixed_attention_fp8_s1207b_h100.json).

    PYTHONPATH=$PWD TITAN_RESULTS_DIR=$OUT python3 -m phase4_scheduler.sweep_small_steps [--quick]

Each timing is one CUDA graph over `--layers` layers (each its own cache), per layer, as bench_decode_attention /
bench_mixed_attention time them; every configuration is checked against the default's output first. Writes
results/small_steps_sweep.json (name with --name): per kernel, case and pool the default's time, every
configuration's, and the best.
"""
from __future__ import annotations

import argparse

import torch
from tqdm.auto import tqdm

from common import artifacts
from common.bench import write_result
from phase4_scheduler import bench_decode_attention as bda
from phase4_scheduler import bench_mixed_attention as bma
from phase4_scheduler.decode_attention import decode_attention

DECODE_CASES = ["1x256", "8x260", "32x260", "64x260", "120x260", "32x1024"]
MIXED_CASES = ["35x260+1x128", "100x260+1x200", "300x260+2x250"]
# (block_n, num_warps, num_stages) x num_splits for the fused decode kernel
DECODE_TILES = [(32, 4, 2), (64, 2, 3), (64, 4, 2), (64, 4, 3), (128, 4, 2), (128, 8, 2)]
DECODE_SPLITS = [1, 2, 4, 8]
# (block_n, num_warps, num_stages) for the prefill kernel (block_m stays 64: GQA-packed decodes fill 8 rows of it)
PREFILL_TILES = [(bn, w, st) for bn in (32, 64, 128) for w in (4, 8) for st in (1, 2, 3)]
DEV = "cuda"  # a CPU test runs the plumbing under the interpreter with a stub timer


def sweep_decode(case: str, fp8: bool, layers: int, tiles, splits) -> dict:
    b, ctx = map(int, case.split("x"))
    caches, bt, lens, pos, slots, qkv, cs = bda.build(b, ctx, layers, fp8=fp8, dev=DEV)
    counters = torch.zeros(b * bda.HKV, dtype=torch.int32, device=DEV)

    def run(i, **knobs):
        q, k, v = bda.views(qkv, b)
        kc, vc, ks, vs = caches[i]
        return decode_attention(q, k, v, slots, kc, vc, bt, lens, pos, cs, counters=counters, k_scale=ks,
                                v_scale=vs, **knobs)

    want = run(0).float()
    default_us = bda.graph_us(run, layers)
    timings = {}
    for (bn, w, st), sp in [(t, s) for t in tiles for s in splits]:
        knobs = dict(block_n=bn, num_warps=w, num_stages=st, num_splits=sp)
        timings[f"{bn}x{w}x{st}/s{sp}"] = time_checked(run, want, knobs, layers, f"decode {case} fp8={fp8}")
    return summarise("decode_attention", case, fp8, default_us, timings)


def sweep_mixed(case: str, fp8: bool, layers: int, tiles) -> dict:
    s = bma.build(*bma.parse_case(case), layers, fp8=fp8, dev=DEV)
    prefill = artifacts.get("attention.paged_prefill")

    def run(i, **knobs):
        kc, vc, ks, vs = s["caches"][i]
        return prefill(s["q"], s["k"], s["v"], s["cu"], s["sl"], s["bt"], kc, vc, s["slots"], ks, vs,
                       max_q_len=s["max_q_len"], **knobs)

    want = run(0).float()
    default_us = bda.graph_us(run, layers)
    timings = {}
    for bn, w, st in tiles:
        knobs = dict(block_n=bn, num_warps=w, num_stages=st)
        timings[f"{bn}x{w}x{st}"] = time_checked(run, want, knobs, layers, f"prefill {case} fp8={fp8}")
    return summarise("paged_prefill", case, fp8, default_us, timings)


def time_checked(run, want: torch.Tensor, knobs: dict, layers: int, what: str) -> float | str:
    """us per layer of run(i, **knobs) after checking its output against the default's (a mismatch raises); a
    configuration that cannot launch (too much shared memory, too many registers) is recorded as its error."""
    try:
        got = run(0, **knobs).float()
    except Exception as e:  # noqa: BLE001 -- triton's OutOfResources and friends: this tile does not fit
        return f"{type(e).__name__}: {str(e)[:120]}"
    err = (got - want).abs().max().item()
    if not err < 5e-2:
        raise AssertionError(f"{what} {knobs}: differs from the default by {err}")
    return bda.graph_us(lambda i: run(i, **knobs), layers)


def summarise(kernel: str, case: str, fp8: bool, default_us: float, timings: dict) -> dict:
    ok = {k: v for k, v in timings.items() if isinstance(v, float)}
    best = min(ok, key=ok.get)
    return {"kernel": kernel, "case": case, "kv_cache_dtype": "fp8" if fp8 else "bf16", "default_us": default_us,
            "best": best, "best_us": timings[best], "default_over_best": default_us / timings[best],
            "timings_us": timings}


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--layers", type=int, default=22, help="layers per graph (each its own cache); TinyLlama: 22")
    ap.add_argument("--quick", action="store_true", help="two tiles, two split counts, two prefill tiles")
    ap.add_argument("--only", choices=["decode", "prefill"], default=None, help="sweep one kernel")
    ap.add_argument("--decode-cases", nargs="+", default=DECODE_CASES, help="BATCHxCONTEXT")
    ap.add_argument("--mixed-cases", nargs="+", default=MIXED_CASES, help="DECODESxCONTEXT+PROMPTSxLENGTH")
    ap.add_argument("--name", default="small_steps_sweep")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("sweep_small_steps needs CUDA (it times kernels on the GPU)")
    dtiles, dsplits, ptiles = ((DECODE_TILES[2:5:2], DECODE_SPLITS[:2], PREFILL_TILES[:2]) if args.quick
                               else (DECODE_TILES, DECODE_SPLITS, PREFILL_TILES))
    jobs = []
    if args.only in (None, "decode"):
        jobs += [("decode", c, fp8) for c in args.decode_cases for fp8 in (False, True)]
    if args.only in (None, "prefill"):
        jobs += [("prefill", c, fp8) for c in args.mixed_cases for fp8 in (False, True)]
    res = {"gpu": torch.cuda.get_device_name(0), "layers": args.layers, "rows": []}
    for kind, case, fp8 in tqdm(jobs, desc="cases"):
        r = (sweep_decode(case, fp8, args.layers, dtiles, dsplits) if kind == "decode"
             else sweep_mixed(case, fp8, args.layers, ptiles))
        print(f"{r['kernel']} {case} {r['kv_cache_dtype']}: default {r['default_us']:.1f} us, best {r['best']} "
              f"{r['best_us']:.1f} us", flush=True)
        res["rows"].append(r)
        write_result("phase4_scheduler", args.name, res)
    return res


if __name__ == "__main__":
    main()
