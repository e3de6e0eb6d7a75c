"""Same-call A/B of the seesaw MLA decode kernel's variants (`mla_decode_gluon.SEESAW_VARIANTS`) at DeepSeek-V3's
dimensions: every variant is checked against the fp32 reference (uniform 4K and the ragged case), then timed in
interleaved rounds (variant 1, 2, ..., then again), so clock and lease drift fall on all of them alike; the
median over rounds of each variant's CUDA-graph time is its figure.

    python -m phase2_mla.ab_seesaw [--schedules seesaw,seesaw_noprefetch,...] [--heads 128,16] [--rounds 7]
                                   [--name ab_seesaw_<tag>]

Writes phase2_mla/results/<name>.json (TITAN_RESULTS_DIR redirects it). Needs a Hopper GPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from phase2_mla.mla_decode_gluon import SEESAW_VARIANTS


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m phase2_mla.ab_seesaw", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedules", default=",".join(SEESAW_VARIANTS),
                    help="comma-separated seesaw variants (default: all of SEESAW_VARIANTS)")
    ap.add_argument("--heads", default="128,16", help="query heads per case (B=64, ctx 4K each)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    ap.add_argument("--splits", default="1", help="comma-separated split counts; each (heads, splits) is a case")
    ap.add_argument("--name", default="ab_seesaw", help="result file stem")
    args = ap.parse_args(argv)
    args.schedules = args.schedules.split(",")
    unknown = [s for s in args.schedules if s not in SEESAW_VARIANTS]
    if unknown:
        ap.error(f"unknown schedule(s) {unknown}; choose from {list(SEESAW_VARIANTS)}")
    args.heads = [int(h) for h in args.heads.split(",")]
    args.splits = [int(n) for n in args.splits.split(",")]
    return args


def ab_case(b: int, h: int, ctx: int, schedules: list[str], rounds: int, splits: int = 1) -> dict:
    """Check, then time every schedule in `rounds` interleaved rounds at (b, h, ctx) with `splits` ranges per
    sequence."""
    from phase2_mla.bench_mla import check_mla, interleaved_ms, mla_call, mla_case

    case = mla_case(b, h, ctx)
    kv_bytes, flops = case["kv_bytes"], case["flops"]
    fns, rows = {}, {}
    for s in schedules:
        cfg = dict(backend="gluon", num_splits=splits, gluon_schedule=s)
        fns[s] = mla_call(case, cfg, ctx)
        err, rag_err, ok = check_mla(case, cfg, fns[s])
        rows[s] = {"schedule": s, "max_abs_err": err, "ragged_max_abs_err": rag_err, "correct": ok, "ms_rounds": []}
        print(f"  {h} heads / {splits} splits {s}: err {err:.4f} / ragged {rag_err:.4f}{'' if ok else '  WRONG'}",
              flush=True)
    timed = [s for s in schedules if rows[s]["correct"]]
    for s, ms_rounds in interleaved_ms({s: fns[s] for s in timed}, rounds).items():
        rows[s]["ms_rounds"] = ms_rounds
    for s in timed:
        ms = statistics.median(rows[s]["ms_rounds"])
        rows[s].update(ms=ms, us=ms * 1e3, tb_s=kv_bytes / ms / 1e9, tflops=flops / ms / 1e9)
        print(f"  {h} heads / {splits} splits {s}: {ms * 1e3:.1f} us = {kv_bytes / ms / 1e9:.3f} TB/s, "
              f"{flops / ms / 1e9:.0f} TFLOP/s (rounds {', '.join(f'{x * 1e3:.1f}' for x in rows[s]['ms_rounds'])})",
              flush=True)
    return {"batch": b, "heads": h, "splits": splits, "ctx": ctx, "kv_bytes": kv_bytes, "flops": flops,
            "rows": list(rows.values())}


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        print("ab_seesaw needs a Hopper GPU (sm_90): the seesaw kernel is Gluon wgmma / TMA code")
        return 1
    from common.bench import write_result

    from phase2_mla.bench_mla import copy_ceiling
    ceil = copy_ceiling()
    print(f"copy ceiling {ceil['tb_s']:.2f} TB/s", flush=True)
    cases = [ab_case(args.batch, h, args.ctx, args.schedules, args.rounds, n) for h in args.heads
             for n in args.splits]
    write_result("phase2_mla", args.name, {"copy_ceiling": ceil, "variants": {s: SEESAW_VARIANTS[s]
                                                                              for s in args.schedules},
                                           "rounds": args.rounds, "cases": cases})
    return 0


if __name__ == "__main__":
    sys.exit(main())
