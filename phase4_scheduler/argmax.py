"""Greedy decoding's argmax over the vocabulary: logits [B, V] -> token ids [B] (int64), torch.argmax's answer.

NOTE (why a kernel of our own): at B=1 on the H100, torch's argmax over TinyLlama's 32,000 bf16 logits was one
single-block reduce of 9.3 us, plus its input cast -- ~1% of a 0.93 ms token, after the forward, where nothing
overlaps it (profile_decode_b1_nopdl_s1208e_h100.json). Here one program per row (16 warps) loads a 32K-logit chunk
in one go -- TinyLlama's whole row: one load, one reduction -- takes the chunk's max with its first index, and over
several chunks keeps the first chunk holding the overall max: the lowest index among equal maxima, as torch returns.
NaN counts as the largest value, as in torch (only a row holding both +inf and NaN could differ: +inf first wins).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from common.pdl import pdl_args, pdl_wait
from phase4_scheduler.fused_kernels import interpreting

CHUNK = 32768  # logits per chunk: 64 per thread at 16 warps -- one load and one reduction for vocabularies <= 32K
UNROLL_CHUNKS = 4  # up to 128K the chunks are unrolled (their loads need not wait for the previous reduction)


@triton.jit
def _chunk_max(x_ptr, c, offs, V, best_v, best_i, CHUNK: tl.constexpr):
    idx = c * CHUNK + offs
    x = tl.load(x_ptr + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
    x = tl.where(x != x, float("inf"), x)  # NaN is the largest, as in torch.argmax
    v, i = tl.max(x, axis=0, return_indices=True, return_indices_tie_break_left=True)
    take = v > best_v  # strictly: on a tie the earlier chunk's (lower) index stays
    return tl.where(take, v, best_v), tl.where(take, c * CHUNK + i, best_i)


@triton.jit
def argmax_kernel(x_ptr, out_ptr, host_ptr, V, stride_x, CHUNK: tl.constexpr, NCHUNK: tl.constexpr,
                  UNROLL: tl.constexpr, HOST: tl.constexpr, PDL: tl.constexpr):
    pdl_wait(PDL)  # the logits are the previous kernel's (the lm_head GEMV): nothing is read before this
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    offs = tl.arange(0, CHUNK)
    best_v = tl.full([], float("-inf"), tl.float32)
    best_i = tl.full([], 0, tl.int32)
    if UNROLL:
        for c in tl.static_range(NCHUNK):
            best_v, best_i = _chunk_max(x_row, c, offs, V, best_v, best_i, CHUNK)
    else:
        for c in range(0, NCHUNK):
            best_v, best_i = _chunk_max(x_row, c, offs, V, best_v, best_i, CHUNK)
    tl.store(out_ptr + row, best_i.to(tl.int64))
    if HOST:  # a pinned host buffer too (graph_io.py: a decode graph's tokens need no device->host copy)
        tl.store(host_ptr + row, best_i.to(tl.int64))


def warps_for(chunk: int) -> int:
    """64 logits a thread at most: 16 warps for a 32K chunk, fewer for small vocabularies (at least 1)."""
    return max(1, min(16, chunk // (64 * 32)))


def greedy_argmax(logits: torch.Tensor, out: torch.Tensor | None = None,
                  host_out: torch.Tensor | None = None) -> torch.Tensor:
    """logits [B, V] (float dtypes, last dim contiguous) -> [B] int64 = logits.argmax(-1). CUDA (or the Triton
    interpreter); other devices take torch.argmax. `out`: a [B] int64 buffer to write (and return) instead of a new
    one; `host_out`: a [B] int64 buffer in pinned host memory that the kernel writes too (graph_io.py; kernel path
    only). Launched with PDL where it is on (common/pdl.py)."""
    if logits.dim() != 2:
        raise ValueError(f"greedy_argmax wants logits [B, V], got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"greedy_argmax wants float logits, got {logits.dtype}")
    b, v = logits.shape
    if v == 0:
        raise ValueError("greedy_argmax: an empty vocabulary has no argmax")
    for name, t in (("out", out), ("host_out", host_out)):
        if t is not None and (t.dtype != torch.int64 or t.shape != (b,)):
            raise ValueError(f"greedy_argmax: {name} must be int64 [{b}], got {t.dtype} {tuple(t.shape)}")
    if not (logits.is_cuda or interpreting()) or b == 0:
        if host_out is not None:
            raise ValueError("greedy_argmax: host_out needs the kernel (CUDA or the Triton interpreter)")
        return logits.argmax(-1) if out is None else torch.argmax(logits, -1, out=out)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if out is None:
        out = torch.empty(b, dtype=torch.int64, device=logits.device)
    chunk = min(CHUNK, triton.next_power_of_2(v))
    n = triton.cdiv(v, chunk)
    pdl, launch = pdl_args(logits)
    argmax_kernel[(b,)](logits, out, out if host_out is None else host_out, v, logits.stride(0), CHUNK=chunk,
                        NCHUNK=n, UNROLL=n <= UNROLL_CHUNKS, HOST=host_out is not None, PDL=pdl,
                        num_warps=warps_for(chunk), **launch)
    return out
