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
def argmax_kernel(x_ptr, out_ptr, V, stride_x, CHUNK: tl.constexpr, NCHUNK: tl.constexpr, UNROLL: tl.constexpr):
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


def warps_for(chunk: int) -> int:
    """64 logits a thread at most: 16 warps for a 32K chunk, fewer for small vocabularies (at least 1)."""
    return max(1, min(16, chunk // (64 * 32)))


def greedy_argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits [B, V] (float dtypes, last dim contiguous) -> [B] int64 = logits.argmax(-1). CUDA (or the Triton
    interpreter); other devices take torch.argmax."""
    if logits.dim() != 2:
        raise ValueError(f"greedy_argmax wants logits [B, V], got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"greedy_argmax wants float logits, got {logits.dtype}")
    b, v = logits.shape
    if v == 0:
        raise ValueError("greedy_argmax: an empty vocabulary has no argmax")
    if not (logits.is_cuda or interpreting()) or b == 0:
        return logits.argmax(-1)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    out = torch.empty(b, dtype=torch.int64, device=logits.device)
    chunk = min(CHUNK, triton.next_power_of_2(v))
    n = triton.cdiv(v, chunk)
    argmax_kernel[(b,)](logits, out, v, logits.stride(0), CHUNK=chunk, NCHUNK=n, UNROLL=n <= UNROLL_CHUNKS,
                        num_warps=warps_for(chunk))
    return out
