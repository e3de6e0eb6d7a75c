"""Phase 0's CUDA C kernels, launched from Python through nvcc + ctypes.

Each .cu file exports `extern "C"` launchers that take device pointers (from `tensor.data_ptr()`) and return a
cudaError_t. We compile each file once into a shared library (cached by source hash), load it with ctypes, and wrap
every launcher in a function that checks devices, dtypes, contiguity and shapes first.

NOTE: nvcc + ctypes instead of torch.utils.cpp_extension: it needs no CUDA build of torch, so the CPU machines can
compile (and link) the kernels too, and what the learner reads is plain CUDA C with a C ABI.
"""
from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from pathlib import Path

import torch

from common.assets import cache_dir

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
SOURCES = {"vector_add": "01_vector_add.cu", "matmul_naive": "02_matmul_naive.cu", "matmul_tiled": "03_matmul_tiled.cu"}


def nvcc_path() -> str | None:
    return shutil.which("nvcc") or (shutil.which("/usr/local/cuda/bin/nvcc"))


def build(source: str, arch: str = "sm_90", verbose: bool = False) -> Path:
    """Compile one .cu into a shared library; returns its path (cached by source + flags hash)."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc was not found on PATH: install the CUDA toolkit (or add /usr/local/cuda/bin to PATH)")
    src = CUDA_DIR / source
    flags = ["-O3", f"-arch={arch}", "-shared", "-Xcompiler", "-fPIC", "-lineinfo"]
    key = hashlib.sha1(src.read_bytes() + " ".join(flags).encode()).hexdigest()[:12]
    out = cache_dir() / "cuda_build" / f"{src.stem}-{arch}-{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [nvcc, *flags, *(["-Xptxas", "-v"] if verbose else []), str(src), "-o", str(out) + ".tmp"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"nvcc failed on {src.name}:\n{r.stderr}")
        if verbose:
            print(r.stderr)
        Path(str(out) + ".tmp").rename(out)
    return out


def _check(t: torch.Tensor, name: str, dim: int) -> None:
    if not t.is_cuda:
        raise ValueError(f"{name} must be a CUDA tensor (got device {t.device}); these kernels run on the GPU only")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {t.dtype}")
    if t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous())")


class CudaKernels:
    """ctypes bindings for 01_vector_add, 02_matmul_naive, 03_matmul_tiled (smem and register-tiled)."""

    def __init__(self, arch: str = "sm_90"):
        self.libs = {name: ctypes.CDLL(str(build(src, arch))) for name, src in SOURCES.items()}
        p, i, ll = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
        self.libs["vector_add"].vector_add.argtypes = [p, p, p, ll]
        for lib, fn in (("matmul_naive", "matmul_naive"), ("matmul_tiled", "matmul_smem"),
                        ("matmul_tiled", "matmul_tiled")):
            getattr(self.libs[lib], fn).argtypes = [p, p, p, i, i, i]

    @staticmethod
    def _ok(code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"{what} launch failed with cudaError {code}")

    def vector_add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _check(a, "a", 1)
        _check(b, "b", 1)
        if a.shape != b.shape or a.device != b.device:
            raise ValueError(f"a and b must match in shape and device: {tuple(a.shape)} vs {tuple(b.shape)}")
        c = torch.empty_like(a)
        self._ok(self.libs["vector_add"].vector_add(a.data_ptr(), b.data_ptr(), c.data_ptr(), a.numel()), "vector_add")
        return c

    def _matmul(self, lib: str, fn: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _check(a, "A", 2)
        _check(b, "B", 2)
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"inner dimensions differ: A{tuple(a.shape)} @ B{tuple(b.shape)}")
        m, k = a.shape
        n = b.shape[1]
        c = torch.empty(m, n, dtype=a.dtype, device=a.device)
        self._ok(getattr(self.libs[lib], fn)(a.data_ptr(), b.data_ptr(), c.data_ptr(), m, n, k), fn)
        return c

    def matmul_naive(self, a, b):
        return self._matmul("matmul_naive", "matmul_naive", a, b)

    def matmul_smem(self, a, b):
        return self._matmul("matmul_tiled", "matmul_smem", a, b)

    def matmul_tiled(self, a, b):
        return self._matmul("matmul_tiled", "matmul_tiled", a, b)


def vector_add_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + b


def matmul_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """fp64 reference (the fp32 kernels land within ~1e-6 relative of it)."""
    return (a.double() @ b.double()).to(a.dtype)
