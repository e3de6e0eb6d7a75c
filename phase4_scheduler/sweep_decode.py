"""Phase 3's paged decode kernel at the serving engine's shapes: which tile / warps / stages / split count wins.

    python -m phase4_scheduler.sweep_decode --name decode_sweep_gpu          # GPU, ~2-3 min (compiles dominate)

Phase 3 tuned the kernel at B=32, ctx 8K. The engine's decode steps look different: B=1 with a few hundred tokens
(the latency target: 22 layers of a latency-bound kernel), and B=256-1024 with 128-512 tokens each (the throughput
target: the batch is wide, every sequence short). TinyLlama's heads (32q / 4kv, d=64), block size 16, bf16 and the
FP8 pool. Each shape records every config's time and the best; paged_decode's per-regime defaults come from here.
"""
from __future__ import annotations

import argparse
import itertools

import torch
from tqdm.auto import tqdm

from common.bench import write_result
from phase3_paged_fp8 import bench_utils as U
from phase3_paged_fp8.bench_attention import decode_sweep
from phase3_paged_fp8.cache_write import FP8
from phase3_paged_fp8.paged_decode import paged_decode

# (B, ctx, dtype, configs (block_n, num_warps, num_stages, num_splits))
SMALL_B = [(bn, w, 2, sp) for bn, w in ((16, 2), (32, 2), (32, 4), (64, 4)) for sp in (1, 2, 4, 8, 16, 32)]
WIDE_B = [(bn, w, st, sp) for bn, w, st in itertools.product((32, 64, 128), (2, 4, 8), (1, 2, 3)) for sp in (1, 2)
          if not (bn == 128 and w == 2)]
WIDE_B_FP8 = [c for c in WIDE_B if c[0] >= 64]
SHAPES = [(1, 256, torch.bfloat16, SMALL_B), (1, 1024, torch.bfloat16, SMALL_B), (64, 512, torch.bfloat16, SMALL_B),
          (1024, 192, torch.bfloat16, WIDE_B), (256, 512, torch.bfloat16, WIDE_B),
          (1024, 192, FP8, WIDE_B_FP8), (256, 512, FP8, WIDE_B_FP8)]


def time_defaults(b, ctx, dtype, hq=32, hkv=4, d=64, bs=16) -> dict:
    """paged_decode with every knob left to its defaults (what the engine runs) at one shape."""
    kc, vc, ks, vs, bt, lens = U.make_paged(b, ctx, hkv, d, bs, dtype)
    q = torch.randn(b, hq, d, device=U.DEV, dtype=torch.bfloat16)
    ms = U.gpu_ms(lambda: paged_decode(q, kc, vc, bt, lens, ks, vs))
    return {"b": b, "ctx": ctx, "dtype": str(dtype), "default_ms": ms, "tb_s": U.kv_bytes(kc, ks, b, ctx) / ms / 1e9}


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--name", default="decode_sweep_gpu")
    ap.add_argument("--smoke", action="store_true", help="two toy configs on the CPU interpreter (checks the script)")
    ap.add_argument("--defaults", action="store_true", help="time only paged_decode's defaults at each shape")
    args = ap.parse_args(argv)
    if args.smoke:
        U.DEV = "cpu"
        shapes = [(2, 40, torch.bfloat16, [(16, 2, 2, 1), (16, 2, 2, 2)])]
    elif not torch.cuda.is_available():
        raise SystemExit("sweep_decode needs a CUDA GPU (or --smoke on the CPU interpreter)")
    else:
        shapes = SHAPES
    res = {"gpu": torch.cuda.get_device_name(0) if U.DEV == "cuda" else "cpu (smoke)", "heads": "32q/4kv d64",
           "shapes": []}
    for b, ctx, dtype, cfgs in tqdm(shapes, desc="shapes"):
        if args.defaults:
            res["shapes"].append(time_defaults(b, ctx, dtype))
            print(res["shapes"][-1], flush=True)
            write_result("phase4_scheduler", args.name, res)
            continue
        r = decode_sweep(dtype, cfgs, b, ctx)
        res["shapes"].append(r)
        print(f"B={b} ctx={ctx} {dtype}: best {r['best']}", flush=True)
        write_result("phase4_scheduler", args.name, res)
    return res


if __name__ == "__main__":
    main()
