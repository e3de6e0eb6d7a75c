"""Phase 0's CUDA kernels: compiled with nvcc on every machine, checked against torch on the GPU."""
import ctypes

import pytest
import torch

from phase0_tinyllama import cuda_kernels
from phase0_tinyllama.cuda_kernels import SOURCES, CudaKernels, build, matmul_ref

needs_nvcc = pytest.mark.skipif(cuda_kernels.nvcc_path() is None, reason="nvcc not found")


@needs_nvcc
@pytest.mark.parametrize("name,source", list(SOURCES.items()))
def test_kernels_compile_and_export_launchers(name, source):
    lib = ctypes.CDLL(str(build(source)))
    assert hasattr(lib, name)
    if name == "matmul_tiled":
        assert hasattr(lib, "matmul_smem")


@needs_nvcc
def test_wrappers_reject_bad_input():
    k = CudaKernels()
    with pytest.raises(ValueError, match="CUDA tensor"):
        k.vector_add(torch.randn(4), torch.randn(4))
    if torch.cuda.is_available():
        with pytest.raises(TypeError, match="float32"):
            k.matmul_tiled(torch.randn(4, 4, device="cuda", dtype=torch.float16), torch.randn(4, 4, device="cuda"))
        with pytest.raises(ValueError, match="inner dimensions"):
            k.matmul_naive(torch.randn(4, 5, device="cuda"), torch.randn(4, 4, device="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 31, 4097, 1 << 20])
def test_vector_add_matches_torch(n):
    k = CudaKernels()
    a, b = torch.randn(n, device="cuda"), torch.randn(n, device="cuda")
    torch.testing.assert_close(k.vector_add(a, b), a + b, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["matmul_naive", "matmul_smem", "matmul_tiled"])
@pytest.mark.parametrize("m,n,kk", [(1, 1, 1), (17, 33, 65), (128, 128, 8), (256, 384, 64), (129, 255, 77), (513, 1000, 300)])
def test_matmul_matches_fp64_reference(impl, m, n, kk):
    k = CudaKernels()
    a, b = torch.randn(m, kk, device="cuda"), torch.randn(kk, n, device="cuda")
    out = getattr(k, impl)(a, b)
    torch.testing.assert_close(out, matmul_ref(a, b), rtol=1e-4, atol=1e-4)
