"""Nsight Compute profile of the register-tiled matmul (03_matmul_tiled.cu) at 4096^3.

On the GPU machine (ncu is there; pass --clock-control none so the card's clocks are left alone):

    ncu --clock-control none --csv --page details -k regex:matmul_tiled -c 1 \\
        --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \\
        python3 -m phase0_tinyllama.profile_ncu target > ncu_tiled.csv
    python3 -m phase0_tinyllama.profile_ncu parse ncu_tiled.csv      # -> results/ncu_matmul_tiled.json
"""
from __future__ import annotations

import csv
import io
import sys

KEEP = ("Duration", "Compute (SM) Throughput", "Memory Throughput", "DRAM Throughput", "L1/TEX Cache Throughput",
        "L2 Cache Throughput", "Registers Per Thread", "Achieved Occupancy", "Theoretical Occupancy",
        "Block Limit Registers", "Static Shared Memory Per Block", "Threads", "Grid Size", "Waves Per SM",
        "SM Frequency", "DRAM Frequency")


def target() -> None:
    import torch

    from phase0_tinyllama.cuda_kernels import CudaKernels

    k = CudaKernels()
    a, b = torch.randn(4096, 4096, device="cuda"), torch.randn(4096, 4096, device="cuda")
    k.matmul_tiled(a, b)
    torch.cuda.synchronize()


def parse(path: str) -> dict:
    text = open(path).read()
    start = text.find('"ID"')
    if start < 0:
        raise ValueError(f"{path} holds no ncu CSV table (did the profile run?)")
    metrics = {}
    for row in csv.DictReader(io.StringIO(text[start:])):
        name = row.get("Metric Name")
        if name in KEEP:
            metrics[name] = {"value": row.get("Metric Value"), "unit": row.get("Metric Unit"),
                             "section": row.get("Section Name")}
        kernel = row.get("Kernel Name")
    return {"kernel": kernel, "metrics": metrics}


if __name__ == "__main__":
    if sys.argv[1:2] == ["target"]:
        target()
    elif sys.argv[1:2] == ["parse"]:
        from common.bench import write_result

        write_result("phase0_tinyllama", "ncu_matmul_tiled", {"ncu": parse(sys.argv[2]), "command": __doc__.strip()})
    else:
        print(__doc__)
