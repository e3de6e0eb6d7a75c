"""Phase 3's paged decode kernel at one engine shape, launched a few times for Nsight Compute to profile one launch.

    ncu --clock-control none --kernel-name regex:paged_decode_kernel --launch-skip 3 --launch-count 1 --set full \
        -o decode_fp8 python3 -m phase3_paged_fp8.profile_decode --dtype fp8     # tools/device_session.sh decodencu

Where each pool's kernel spends its time is read from the counters: issue slots, pipe utilisation, stall reasons
per instruction. Its first use found the FP8 kernel waiting on its per-token scale loads (decode_ncu_fp8_s1206_h100);
with those loaded a tile ahead it runs 65.7 us against bf16's 81.7 on the H100 (decode_ncu_*_s1206b_h100). Without
ncu it prints the event-timed launches.
"""
from __future__ import annotations

import argparse

import torch

from common.bench import time_fn
from phase3_paged_fp8 import bench_utils as U
from phase3_paged_fp8.cache_write import FP8
from phase3_paged_fp8.paged_decode import paged_decode


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--dtype", choices=["bf16", "fp8"], default="fp8", help="the pool's dtype")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--ctx", type=int, default=192)
    ap.add_argument("--launches", type=int, default=5)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("profile_decode needs a CUDA GPU")
    kc, vc, ks, vs, bt, lens = U.make_paged(args.batch, args.ctx, 4, 64, 16,
                                            FP8 if args.dtype == "fp8" else torch.bfloat16)
    q = torch.randn(args.batch, 32, 64, device="cuda", dtype=torch.bfloat16)
    t = time_fn(lambda: paged_decode(q, kc, vc, bt, lens, ks, vs), warmup=0, iters=args.launches)
    print(f"paged_decode {args.dtype} B={args.batch} ctx={args.ctx}: {args.launches} launches, event-timed one by "
          f"one: median {t['median_ms'] * 1e3:.1f} us, best {t['min_ms'] * 1e3:.1f} us")
    return t


if __name__ == "__main__":
    main()
