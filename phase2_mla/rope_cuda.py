"""The CUDA C RoPE kernel (rope_kernel.cu): build it with nvcc into a shared library, call it through ctypes.

NOTE (design): no PyTorch C++ extension. The .cu exports one `extern "C"` function taking raw device pointers,
strides and a stream; Python passes `tensor.data_ptr()`s. That keeps the build to one nvcc command (it compiles on
the CPU-only machine too, which the CPU test suite checks) and works with any torch build on the GPU machine.
The wrapper `rope_cuda_()` shares its argument checks with the Triton wrapper and picks the widest vector width the
tensors' alignment allows.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import torch

from phase2_mla.rope import check_rope_args

SOURCE = Path(__file__).with_name("rope_kernel.cu")
BUILD_DIR = Path(os.environ.get("TITAN_BUILD_DIR", Path(__file__).resolve().parent / "build"))
_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_lib = None


def nvcc_command(out: Path, arch: str = "sm_90") -> list[str]:
    return ["nvcc", "-O3", f"-arch={arch}", "-shared", "-Xcompiler", "-fPIC", "-lineinfo", "-o", str(out),
            str(SOURCE)]


def build(arch: str = "sm_90", out_dir: Path | None = None) -> Path:
    """Compile rope_kernel.cu (cached by source hash and arch); returns the .so path. Raises with nvcc's message."""
    if shutil.which("nvcc") is None:
        raise RuntimeError("nvcc not found on PATH: install the CUDA toolkit (or use the Triton kernel, rope_)")
    tag = hashlib.sha1(SOURCE.read_bytes() + arch.encode()).hexdigest()[:12]
    out_dir = Path(out_dir or BUILD_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"librope_{arch}_{tag}.so"
    if not out.exists():
        r = subprocess.run(nvcc_command(out.with_suffix(".tmp.so"), arch), capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"nvcc failed to build {SOURCE.name}:\n{r.stderr}")
        out.with_suffix(".tmp.so").rename(out)
    return out


def _load():
    global _lib
    if _lib is None:
        if not torch.cuda.is_available():
            raise RuntimeError("the CUDA RoPE kernel needs a CUDA device; on CPU use rope_ref (or rope_ under "
                               "TRITON_INTERPRET=1)")
        major, minor = torch.cuda.get_device_capability()
        lib = ctypes.CDLL(str(build(f"sm_{major}{minor}")))
        lib.titan_rope_inplace.restype = ctypes.c_int
        lib.titan_rope_inplace.argtypes = ([ctypes.c_void_p] * 5 + [ctypes.c_int] * 4 + [ctypes.c_int64] * 4
                                           + [ctypes.c_int] * 3 + [ctypes.c_void_p])
        _lib = lib
    return _lib


def _vec_width(q: torch.Tensor, k: torch.Tensor, layout: str) -> int:
    """Pairs per thread: the largest v with 16-byte (or smaller) aligned vector accesses for every row."""
    half, es = q.shape[2] // 2, q.element_size()
    for v in (8, 4, 2, 1):
        elems = 2 * v if layout == "interleaved" else v  # numbers per vector access
        if elems * es > 16 or half % v:
            continue
        ok = all(x % elems == 0 for x in (q.stride(0), q.stride(1), k.stride(0), k.stride(1)))
        ok &= all(t.data_ptr() % (elems * es) == 0 for t in (q, k))
        ok &= layout == "interleaved" or half % elems == 0
        if ok:
            return v
    return 1


def rope_cuda_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
               layout: str = "half", check_bounds: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, Hq, R] and k [T, Hk, R] in place with the CUDA C kernel; returns (q, k)."""
    check_rope_args(q, k, cos, sin, positions, layout, bounds=check_bounds)
    if q.device.type != "cuda":
        raise ValueError(f"rope_cuda_ needs CUDA tensors, got {q.device}; use rope_ref or rope_ on CPU")
    lib = _load()
    err = lib.titan_rope_inplace(
        q.data_ptr(), k.data_ptr(), positions.data_ptr(), cos.data_ptr(), sin.data_ptr(), q.shape[0], q.shape[1],
        k.shape[1], q.shape[2], q.stride(0), q.stride(1), k.stride(0), k.stride(1), _DTYPES[q.dtype],
        int(layout == "interleaved"), _vec_width(q, k, layout), torch.cuda.current_stream(q.device).cuda_stream)
    if err:
        raise RuntimeError(f"titan_rope_inplace failed with cudaError {err}")
    return q, k
