"""Programmatic dependent launch (PDL, Hopper and later): let a kernel start while the one before it finishes.

    from common.pdl import pdl_args
    pdl, launch = pdl_args(x)                 # (False, {}) or (True, {"launch_pdl": True})
    my_kernel[grid](..., PDL=pdl, **launch)   # the kernel: `if PDL: gdc_wait(); gdc_launch_dependents()`

NOTE (what it buys, and the rule every PDL kernel follows): a decode step at B=1 is ~190 short kernels in a row;
each normally starts only after the previous one has completed and its results are flushed, so every boundary
costs the next kernel's launch and ramp-up with the memory system idle. A kernel launched with the PDL attribute
may be scheduled as soon as every program of the previous kernel has executed `griddepcontrol.launch_dependents`
(or exited). It can then do work that depends on nothing the previous kernel writes (the skinny GEMM loads its
first weight tile: weights never change) and must call `gdc_wait()` -- which returns once the previous kernel has
completed and its memory is visible -- BEFORE it reads any activation or writes anything. Writing before the wait
could overwrite a buffer the previous kernel still reads (the caching allocator reuses freed memory in stream
order). Because each kernel waits for its predecessor before it completes, the chain stays ordered transitively.
Kernels here call `gdc_launch_dependents()` right after their wait, so at most one kernel runs ahead.

Off (an empty dict) on the CPU, under the Triton interpreter (which has no griddepcontrol), before compute
capability 9.0, and when TITAN_PDL=0 (the A/B switch bench_latency's '+nopdl' variants use). Read at launch time:
a CUDA graph keeps what was true when it was captured.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

ENV = "TITAN_PDL"


@functools.lru_cache(maxsize=None)
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_enabled(t: torch.Tensor) -> bool:
    if not t.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1" or os.environ.get(ENV, "1") == "0":
        return False
    return _capable(t.device.index if t.device.index is not None else torch.cuda.current_device())


def pdl_args(t: torch.Tensor) -> tuple[bool, dict]:
    """(the kernel's PDL constexpr, the launcher's keywords) for a kernel whose tensors live where `t` does."""
    on = pdl_enabled(t)
    return on, ({"launch_pdl": True} if on else {})


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """In a kernel: wait for the previous kernel's results, then let the next kernel be scheduled (see NOTE)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
