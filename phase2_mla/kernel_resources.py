"""What the MLA decode kernel costs in registers, spills and shared memory on Hopper — measured on a CPU machine.

Triton compiles for a GPU it does not have (common/ptxas.py: `triton.compile` for sm_90 lowers the kernel to PTX, and
the ptxas bundled with Triton reports registers per thread and spill stores); the PTX shows the kernel's
instructions (wgmma = Hopper tensor cores, mma.sync = the older path). This is how the slow configurations of the
H100 sweep were explained without another GPU run.

    python -m phase2_mla.kernel_resources      # writes phase2_mla/results/kernel_resources.json

NOTE: run it without TRITON_INTERPRET (the interpreter never compiles); `main` refuses to run under it.
"""
from __future__ import annotations

import os
import sys

ARGS = ["*bf16", "*bf16", "*bf16", "*i32", "*i32", "*fp32", "*fp32", "fp32"] + ["i32"] * 12


def resources(block_h: int, block_n: int, num_warps: int, num_stages: int, dv_split: int = 1, reload_q: bool = False,
              swap_ab: bool = False, page: int = 64, dc: int = 512, dr: int = 64, kernel=None) -> dict:
    """Compile mla_decode_kernel for sm_90a at DeepSeek-V3 dims; ptxas -v's registers / spills, smem, MMA kind.
    Pointers and integer arguments are declared 16-divisible, as Triton specializes them at a real launch with
    these shapes; the strides that are 1 here (lse's split stride, the output's value stride) are constants, as Triton
    specializes an integer argument equal to 1."""
    from common.ptxas import hopper_resources, wgmma_shapes
    from phase2_mla.mla_decode import mla_decode_kernel
    kernel = kernel or mla_decode_kernel

    consts = dict(DC=dc, DR=dr, BLOCK_DC=dc, BLOCK_DR=dr, PAGE=page, BLOCK_H=block_h, BLOCK_N=block_n, NUM_SPLITS=1,
                  LOOP_ITERS=0, PREC="tf32", DV_SPLIT=dv_split, RELOAD_Q=reload_q, SWAP_AB=swap_ab, sl_h=1, so_d=1)
    runtime = [n for n in kernel.arg_names if n not in consts]
    res = hopper_resources(kernel, dict(zip(runtime, ARGS)), consts, num_warps, num_stages,
                           divisible=[n for n in runtime if n != "scale_log2"])
    ptx = res["ptx"]
    return {"block_h": block_h, "block_n": block_n, "num_warps": num_warps, "num_stages": num_stages,
            "dv_split": dv_split, "reload_q": reload_q, "registers": res["registers"],
            "spill_store_bytes": res["spill_store_bytes"], "shared_bytes": res["shared_bytes"],
            "wgmma": ptx.count("wgmma.mma_async"), "mma_sync": ptx.count("mma.sync"),
            "wgmma_shapes": wgmma_shapes(ptx),
            "swap_ab": swap_ab,
            "ptxas_error": res["ptxas_error"]}


CONFIGS = [(16, 32, 4, 2), (32, 32, 4, 2), (64, 16, 8, 2), (64, 32, 8, 2), (64, 64, 8, 2), (64, 32, 16, 2),
           (64, 32, 8, 2, 1, True), (64, 32, 8, 2, 2), (64, 16, 4, 2, 4),
           # block_h, block_n, warps, stages, dv_split, reload_q, swap_ab: run 2's candidates
           (128, 32, 8, 2, 2), (128, 16, 8, 2, 2), (128, 64, 8, 2, 2), (64, 64, 8, 2, 2),
           (64, 64, 8, 2, 1, False, True), (32, 64, 8, 2, 1, False, True), (64, 128, 8, 1, 1, False, True)]


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(
        [] if argv is None else argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter does not compile kernels")
        return 1
    from common.bench import write_result

    rows = []
    for cfg in CONFIGS:
        row = resources(*cfg)
        rows.append(row)
        print(f"block_h={row['block_h']:3} block_n={row['block_n']:3} warps={row['num_warps']:2} "
              f"dv_split={row['dv_split']} reload_q={row['reload_q']!s:5} swap_ab={row['swap_ab']!s:5}: "
              f"{row['registers']} regs, {row['spill_store_bytes']} B spilled, {row['shared_bytes'] // 1024} KiB smem, "
              f"{row['wgmma_shapes'] or 'mma.sync'}", flush=True)
    from phase2_mla.mla_decode_gluon import hopper_resources_gluon
    # every schedule of the Gluon kernel (page 64, 1 split), the loop's events (mma_order: long) left out; the
    # serial one is recorded as `gluon`, the others under `gluon_schedules`
    schedules = {}
    for name in ("serial", "pipelined", "seesaw", "seesaw_noprefetch", "seesaw_chunked"):
        schedules[name] = r = {k: v for k, v in hopper_resources_gluon(schedule=name).items() if k != "mma_order"}
        print(f"gluon schedule={name}: {r['registers']} regs, {r['spill_store_bytes']} B spilled, "
              f"{r['shared_bytes'] // 1024} KiB smem, {r['wgmma_shapes']}, A in registers {r['wgmma_a_in_registers']}")
    gluon = schedules.pop("serial")
    write_result("phase2_mla", "kernel_resources", {"target": "sm_90a (compiled on CPU)", "rows": rows,
                                                    "gluon": gluon, "gluon_schedules": schedules})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
