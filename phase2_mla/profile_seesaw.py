"""The seesaw MLA decode kernel at the gate's shape, launched a few times for Nsight Compute to profile one launch.

    ncu --clock-control none --kernel-name regex:seesaw --launch-skip 3 --launch-count 1 --set full \
        -o seesaw python3 -m phase2_mla.profile_seesaw          # on the GPU machine (tools/device_session.sh mlancu)

Where the time goes inside the kernel (issue 4's open question: 2.21 TB/s against 2.4 at 128 heads, B=64, ctx 4K)
is read from the hardware counters: the tensor pipe's utilisation, the warp stall reasons (waiting on wgmma, on
mbarriers, on the partition barrier), and per SASS instruction where the warps wait. Without ncu it prints the
kernel's time (CUDA events) and checks the output against the fp32 reference, so the profiled launch is a correct one.
"""
from __future__ import annotations

import argparse

import torch

from common.bench import time_fn
from phase2_mla.bench_mla import mla_inputs, mla_ref_full
from phase2_mla.mla_decode import mla_paged_decode


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--heads", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--schedule", default="seesaw", choices=["seesaw", "seesaw_chunked", "serial", "pipelined"])
    ap.add_argument("--launches", type=int, default=5, help="launches after the correctness check (ncu skips some)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("profile_seesaw needs a CUDA GPU (the Gluon kernel is Hopper-only)")
    q_lat, q_pe, kv, bt, lens = mla_inputs(args.batch, args.heads, args.ctx)
    scale = 192 ** -0.5

    def run():
        return mla_paged_decode(q_lat, q_pe, kv, bt, lens, scale, max_seq_len=args.ctx, check=False, backend="gluon",
                                num_splits=1, gluon_schedule=args.schedule)

    err = (run().float() - mla_ref_full(q_lat, q_pe, kv, bt, args.ctx, scale)).abs().max().item()
    if err > 2e-2:
        raise SystemExit(f"profile_seesaw: max abs error {err:.4f} against the reference: not profiling a wrong kernel")
    t = time_fn(run, warmup=0, iters=args.launches)  # one launch per CUDA-event pair
    kv_bytes = args.batch * args.ctx * kv.shape[-1] * kv.element_size()
    print(f"{args.schedule}: B={args.batch} heads={args.heads} ctx={args.ctx}: max abs err {err:.2e}; "
          f"{args.launches} launches, event-timed one by one: median {t['median_ms'] * 1e3:.1f} us, best "
          f"{t['min_ms'] * 1e3:.1f} us = {kv_bytes / t['min_ms'] / 1e9:.2f} TB/s")
    return {"err": err, **t}


if __name__ == "__main__":
    main()
