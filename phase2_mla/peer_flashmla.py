"""The peer on the same GPU: FlashMLA (DeepSeek's Hopper MLA decode kernel, as vLLM 0.25.0 ships it) against our
seesaw kernel on the same inputs, in the same call.

    python -m phase2_mla.peer_flashmla --so DIR [--cases 128x64,16x64] [--rounds 7] [--name peer_flashmla_<tag>]

Why: issue 4's goal for DeepSeek-V3's 128 heads (2.4 TB/s) was set from FlashMLA's published H800 figures. At that
shape our kernel runs the H100 at its 700 W board limit (contention_mla.py); whether FlashMLA does the same, and what
it reaches on THIS board under the same cap, is what says whether the goal is a kernel gap or the board's.

FlashMLA is not vendored: `--so` names a folder holding vLLM's compiled extension `_flashmla_C.abi3.so` (taken from
the vLLM wheel by tools/device_carry.sh into the git-ignored .carry/flashmla/), loaded at run time; its op
`torch.ops._flashmla_C.dense_decode_fwd` reads the same paged latent cache as ours ([pages, 64, 576] is FlashMLA's
[pages, 64, 1, 576] with one KV head), the same int32 block table and lengths, q = [q_lat | q_pe].

Per case (B sequences, H heads, ctx 4K): both kernels checked against the fp32 reference (uniform case; the ragged
case too), then timed in interleaved rounds (CUDA graphs, median), then each run back to back (a CUDA graph of 20
calls, replayed) while nvidia-smi samples the SM clock, board power and the clock-event reasons
(contention_mla.clocks_under_graph): energy per call = sustained board power x the rounds' time (a lower bound where
the sustained clock is below the rounds'). Writes phase2_mla/results/<name>.json
(TITAN_RESULTS_DIR redirects it). Needs a Hopper GPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
from pathlib import Path

import torch

SO_NAME = "_flashmla_C.abi3.so"
TOL = 2e-2  # the same bar as bench_mla.check_mla


def load_flashmla(folder: str | os.PathLike):
    """Import vLLM's FlashMLA extension from `folder` (registers torch.ops._flashmla_C); its op namespace."""
    path = Path(folder) / SO_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: tools/device_carry.sh extracts it from the vLLM peer (.peer/)")
    spec = importlib.util.spec_from_file_location("_flashmla_C", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return torch.ops._flashmla_C


def flashmla_call(ops, q_lat, q_pe, kv, bt, lens, scale: float):
    """A zero-argument FlashMLA dense decode on our inputs, returning o_lat [B, H, 512]. The first call computes
    FlashMLA's tile-scheduler metadata (its own kernel); later calls reuse it, as vLLM does within a step."""
    b, h, dc = q_lat.shape
    q = torch.cat((q_lat, q_pe), -1).unsqueeze(1)  # [B, 1, H, 576]
    kc = kv.unsqueeze(2)  # [pages, 64, 1, 576]: the same memory
    meta = [None, None]

    def fn():
        out, _lse, m, n = ops.dense_decode_fwd(q, kc, dc, lens, bt, scale, False, meta[0], meta[1], None)
        meta[0], meta[1] = m, n
        return out.view(b, h, dc)

    fn()  # metadata, outside any graph
    return fn


def peer_case(ops, b: int, h: int, ctx: int, rounds: int) -> dict:
    from phase2_mla.bench_mla import check_mla, interleaved_ms, mla_call, mla_case
    from phase2_mla.contention_mla import clocks_under_graph

    case = mla_case(b, h, ctx)
    kv_bytes, flops = case["kv_bytes"], case["flops"]
    ours = mla_call(case, dict(backend="gluon", num_splits=None), ctx)  # the wrapper's defaults (seesaw, its rules)
    err, rag_err, ok = check_mla(case, dict(backend="gluon", num_splits=None), ours)
    rows = {"seesaw": {"kernel": "seesaw (ours, defaults)", "max_abs_err": err, "ragged_max_abs_err": rag_err,
                       "correct": ok}}
    fns = {"seesaw": ours}
    try:
        fm = flashmla_call(ops, *case["args"])
        f_err = (fm().float() - case["ref"]).abs().max().item()
        rag = flashmla_call(ops, *case["rag_args"])
        f_rag = (rag().float() - case["rag_ref"]).abs().max().item()
        rows["flashmla"] = {"kernel": "FlashMLA (vLLM 0.25.0's _flashmla_C)", "max_abs_err": f_err,
                            "ragged_max_abs_err": f_rag, "correct": f_err < TOL and f_rag < TOL}
        fns["flashmla"] = fm
    except Exception as e:  # noqa: BLE001 -- the peer failing is a result, not a crash of ours
        rows["flashmla"] = {"kernel": "FlashMLA", "error": f"{type(e).__name__}: {str(e)[:300]}", "correct": False}
    for k, r in rows.items():
        print(f"  {h} heads B={b} {k}: err {r.get('max_abs_err', float('nan')):.4f} / ragged "
              f"{r.get('ragged_max_abs_err', float('nan')):.4f}{'' if r['correct'] else '  NOT TIMED ' + r.get('error', 'WRONG')}",
              flush=True)
    timed = [k for k in fns if rows[k]["correct"]]
    for k, ms_rounds in interleaved_ms({k: fns[k] for k in timed}, rounds).items():
        rows[k]["ms_rounds"] = ms_rounds
    for k in timed:
        ms = statistics.median(rows[k]["ms_rounds"])
        rows[k].update(us=ms * 1e3, tb_s=kv_bytes / ms / 1e9, tflops=flops / ms / 1e9)
    for k in timed:  # sustained: clock and power under each kernel alone
        c = clocks_under_graph(fns[k])
        rows[k].update(c)
        if "power_w" in c:
            rows[k]["energy_mj_per_call"] = c["power_w"] * rows[k]["us"] / 1e3
        r = rows[k]
        print(f"  {h} heads B={b} {k}: {r['us']:.1f} us = {r['tb_s']:.3f} TB/s, {r['tflops']:.0f} TFLOP/s "
              f"(rounds {', '.join(f'{x * 1e3:.1f}' for x in r['ms_rounds'])}); sustained: SM clock "
              f"{r.get('sm_clock_mhz', '?')} MHz, {r.get('power_w', '?')} W of {r.get('power_limit_w', '?')}, "
              f"limited by {r.get('clock_limited_by', '?')}, {r.get('energy_mj_per_call', float('nan')):.3f} mJ a call",
              flush=True)
    out = {"batch": b, "heads": h, "ctx": ctx, "kv_bytes": kv_bytes, "flops": flops, "rows": list(rows.values())}
    if all(k in rows and "us" in rows[k] for k in ("seesaw", "flashmla")):
        out["flashmla_over_ours"] = rows["seesaw"]["us"] / rows["flashmla"]["us"]  # > 1: FlashMLA faster
    return out


def rows_by_kernel(case: dict) -> dict:
    """A recorded case's rows keyed "ours" / "flashmla" (each row's `kernel` names it), for the readers of the
    record (the gate, the figure)."""
    return {("ours" if r["kernel"].startswith("seesaw") else "flashmla"): r for r in case["rows"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phase2_mla.peer_flashmla", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--so", default=os.environ.get("TITAN_FLASHMLA_DIR", ".carry/flashmla"),
                    help=f"folder holding vLLM's {SO_NAME} (default: $TITAN_FLASHMLA_DIR or .carry/flashmla)")
    ap.add_argument("--cases", default="128x64,16x64,128x32,128x16", help="comma-separated HEADSxBATCH (ctx --ctx)")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    ap.add_argument("--name", default="peer_flashmla")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cases = [tuple(int(v) for v in c.split("x")) for c in args.cases.split(",")]
    except ValueError:
        ap.error(f"--cases takes HEADSxBATCH items, got {args.cases!r}")
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        print("peer_flashmla needs a Hopper GPU (sm_90): both kernels are Hopper code")
        return 1
    try:
        ops = load_flashmla(args.so)
    except (OSError, ImportError) as e:
        print(f"peer_flashmla: cannot load FlashMLA: {e}")
        return 1
    from common.bench import write_result
    from phase2_mla.bench_mla import copy_ceiling
    ceil = copy_ceiling()
    print(f"copy ceiling {ceil['tb_s']:.2f} TB/s", flush=True)
    res = [peer_case(ops, b, h, args.ctx, args.rounds) for h, b in cases]
    write_result("phase2_mla", args.name, {"copy_ceiling": ceil, "peer": "FlashMLA from vLLM 0.25.0's wheel "
                                           "(vllm/_flashmla_C.abi3.so), loaded at run time", "rounds": args.rounds,
                                           "cases": res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
