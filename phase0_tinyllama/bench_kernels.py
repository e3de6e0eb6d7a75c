"""GPU benchmark: the device ceilings, phase 0's CUDA kernels, and measured roofline points.

    python -m phase0_tinyllama.bench_kernels          # on the GPU machine; writes results/kernels_gpu.json

1. Ceilings measured in this run: device-to-device copy (bytes read + written) and a cuBLAS bf16 GEMM 8192^3.
2. Kernels checked against torch on fresh random inputs (awkward shapes too), outputs poisoned with NaN first.
3. Timings: vector add (bandwidth), naive / smem / register-tiled matmul at 4096^3 (TFLOP/s, tiled/naive ratio).
4. Roofline points: large and decode-shaped bf16 GEMMs (cuBLAS) and the fp32 matmul kernels.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from common.bench import time_fn, write_result
from phase0_tinyllama.cuda_kernels import CudaKernels, matmul_ref
from phase0_tinyllama.roofline import gemm_cost


def rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, device="cuda", dtype=dtype)


def ceilings() -> dict:
    n = 1 << 30  # 1 GiB buffers: far beyond L2
    src, dst = torch.empty(n, dtype=torch.uint8, device="cuda").random_(), torch.empty(n, dtype=torch.uint8, device="cuda")
    t = time_fn(lambda: dst.copy_(src), warmup=5, iters=30)
    copy_tb_s = 2 * n / (t["median_ms"] * 1e-3) / 1e12
    del src, dst
    a, b = rand(8192, 8192, dtype=torch.bfloat16), rand(8192, 8192, dtype=torch.bfloat16)
    t = time_fn(lambda: a @ b, warmup=5, iters=20)
    return {"copy_tb_s": copy_tb_s, "bf16_gemm_8192_tflops": 2 * 8192**3 / (t["median_ms"] * 1e-3) / 1e12}


def check_kernels(k: CudaKernels) -> dict:
    errs = {}
    for n in (1, 1000, 1 << 20, (1 << 22) + 3):
        a, b = rand(n), rand(n)
        torch.testing.assert_close(k.vector_add(a, b), a + b, rtol=0, atol=0)
    for name in ("matmul_naive", "matmul_smem", "matmul_tiled"):
        worst = 0.0
        for m, n_, kk in [(1, 1, 1), (17, 33, 65), (128, 128, 8), (256, 384, 64), (129, 255, 77), (1000, 515, 300), (2048, 1024, 4096)]:
            a, b = rand(m, kk), rand(kk, n_)
            out = getattr(k, name)(a, b)
            ref = matmul_ref(a, b)
            rel = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
            assert torch.isfinite(out).all() and rel < 1e-5, f"{name} {m}x{n_}x{kk}: rel err {rel}"
            worst = max(worst, rel)
        errs[name] = worst
    return errs


def main() -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("bench_kernels needs a CUDA GPU (it times the kernels and the device's ceilings); on a CPU "
                         "`make phase0` checks that they compile with nvcc")
    torch.manual_seed(0)
    k = CudaKernels()
    result = {"ceilings": ceilings()}
    print("ceilings:", result["ceilings"])
    result["max_rel_error"] = check_kernels(k)
    print("correctness (max relative error vs fp64):", result["max_rel_error"])

    n = 1 << 28
    a, b = rand(n), rand(n)
    t = time_fn(lambda: k.vector_add(a, b), warmup=3, iters=20)
    result["vector_add"] = {"n": n, **t, "tb_s": 12 * n / (t["median_ms"] * 1e-3) / 1e12}
    del a, b

    size = 4096
    a, b = rand(size, size), rand(size, size)
    flops, nbytes = gemm_cost(size, size, size, 4)
    mm = {}
    for name in tqdm(("matmul_naive", "matmul_smem", "matmul_tiled"), desc="matmul kernels"):
        t = time_fn(lambda: getattr(k, name)(a, b), warmup=2, iters=10)
        mm[name] = {**t, "tflops": flops / (t["median_ms"] * 1e-3) / 1e12, "flops": flops, "bytes": nbytes}
    torch.backends.cuda.matmul.allow_tf32 = False
    t = time_fn(lambda: a @ b, warmup=2, iters=10)
    mm["torch_fp32_cublas"] = {**t, "tflops": flops / (t["median_ms"] * 1e-3) / 1e12, "flops": flops, "bytes": nbytes}
    result["matmul_4096_fp32"] = mm
    result["tiled_over_naive"] = mm["matmul_naive"]["median_ms"] / mm["matmul_tiled"]["median_ms"]
    print({k_: round(v["tflops"], 2) for k_, v in mm.items()}, "tiled/naive =", round(result["tiled_over_naive"], 2))

    points = {}
    for m, n_, kk in [(8192, 8192, 8192), (1, 5632, 2048), (64, 5632, 2048), (256, 5632, 2048), (1, 2048, 5632)]:
        x, w = rand(m, kk, dtype=torch.bfloat16), rand(kk, n_, dtype=torch.bfloat16)
        t = time_fn(lambda: x @ w, warmup=5, iters=50)
        f, by = gemm_cost(m, n_, kk, 2)
        points[f"bf16 gemm {m}x{n_}x{kk}"] = {"flops": f, "bytes": by, **t}
    result["roofline_points"] = points
    write_result("phase0_tinyllama", "kernels_gpu", result)
    return result


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
