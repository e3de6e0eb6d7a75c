"""The skinny GEMM for decode: out [M, N] = x [M, K] @ w [N, K]^T for M <= 16, at high weight bandwidth, plus
variants with the layer's elementwise work folded in: norm_linear (add+RMSNorm before qkv / gate_up),
norm_linear_rope (and RoPE after qkv), silu_mul_linear (SiLU-and-mul before down). `linear()` dispatches.

NOTE (the design): cuBLAS, tuned for large M, reads a decode-shaped weight at ~1 TB/s on the H100. Here every
program owns a thin slab of BLOCK_N (2-16) weight rows and walks K in wide tiles (128-bit loads along K, fp32
partial products in registers, one reduction at the end), so even the 2048x2048 `o` projection spreads over
hundreds of programs and the chip keeps enough bytes in flight. M == 1 multiplies and sums (no tensor cores
needed); 2 <= M <= 16 pads M to 16 and uses tl.dot with the weight tile as the big operand. Folding the norm in
costs each program a first pass over its (L2-resident, 4 KB) input row; folding SiLU in costs nothing extra.
M == 1 tiles follow `step_tile` (whole rows: measured inside the decode step); the rest are autotuned per
(N, K, path): run every shape once before capturing a CUDA graph.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from common.pdl import pdl_args, pdl_wait
from phase4_scheduler.fused_kernels import (_check, _check_rope, interpreting, rms_norm_ref, rope_qk_ref, silu_mul,
                                            silu_mul_ref)

SKINNY_KERNEL_MAX_M = 16  # the kernels take 1..16 rows (M == 1: GEMV; 2..16: tensor cores, M padded to 16)
# linear() and the fused model send x with at most this many rows to the skinny kernels; more go to cuBLAS.
# NOTE (measured, H100, results/fused_step_sweep_gpu.json): a whole TinyLlama decode step at B=2..16 took 2.69-2.71 ms
# through the tensor-core skinny path with the norm/SiLU prologues, 1.89-2.00 ms without prologues, and 1.68-1.81 ms
# through cuBLAS with the elementwise fusions; at B=1 the GEMV path wins (1.50 vs 1.60 ms). So only M == 1 is skinny.
SKINNY_MAX_M = 1


# MODE 0: x as is. MODE 1: x <- rms_norm(x + res) * nw (norm_linear; program 0 also writes x + res). MODE 2: x <- the
# SiLU-and-mul of a [M, 2K] gate_up input (silu_mul_linear). The prologue repeats the unfused ops' roundings.
@triton.jit
def _activation(x_ptr, r_ptr, nw_ptr, offs, kk, mask, inv, K, MODE: tl.constexpr, HAS_RES: tl.constexpr):
    """The GEMM input at element offsets `offs` (columns kk), as fp32 values rounded to the activation dtype."""
    dt = x_ptr.dtype.element_ty
    if MODE == 2:
        g = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(x_ptr + offs + K, mask=mask, other=0.0).to(tl.float32)
        x = ((g * tl.sigmoid(g)).to(dt).to(tl.float32) * u).to(dt).to(tl.float32)
    else:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if MODE == 1:
            if HAS_RES:
                x = (x + tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)).to(dt).to(tl.float32)
            nw = tl.load(nw_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
            x = ((x * inv).to(dt).to(tl.float32) * nw).to(dt).to(tl.float32)
    return x


@triton.jit
def _squares(x_ptr, r_ptr, ro_ptr, offs, mask, write, HAS_RES: tl.constexpr):
    """One K tile of norm_linear's first pass: (x + res)^2 in fp32; program 0 (write) also stores x + res."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = (x + tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)).to(ro_ptr.dtype.element_ty)
        tl.store(ro_ptr + offs, r, mask=mask & write)
        x = r.to(tl.float32)
    return x * x


@triton.jit
def _normed_row(x_ptr, r_ptr, nw_ptr, ro_ptr, k, mask, write, eps, K, HAS_RES: tl.constexpr):
    """norm_linear's prologue when one K tile holds the whole row: x (+ res) loaded once, its rms and the normalised
    row from the same registers (the two-pass form, _squares then _activation, reads the row twice). Program 0
    (write) stores x + res. Same roundings as _squares + _activation."""
    dt = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + k, mask=mask, other=0.0).to(tl.float32)
    nw = tl.load(nw_ptr + k, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = (x + tl.load(r_ptr + k, mask=mask, other=0.0).to(tl.float32)).to(ro_ptr.dtype.element_ty)
        tl.store(ro_ptr + k, r, mask=mask & write)
        x = r.to(tl.float32)
    inv = tl.rsqrt(tl.sum(x * x, axis=0) / K + eps)
    return ((x * inv).to(dt).to(tl.float32) * nw).to(dt).to(tl.float32)


@triton.jit
def _store_rows(x_ptr, out_ptr, o, slab, n, n_mask, SILU: tl.constexpr, HALF: tl.constexpr, BLOCK_N: tl.constexpr):
    """A slab's BLOCK_N fp32 row sums -> out, rounded to the activation (x) dtype first: an fp32 `out` (the logits
    buffer, linear_small_m's out=) receives exactly what a bf16 GEMM followed by .float() gives. With SILU the rows
    are (gate j, up j) pairs (see _rows) and the slab stores silu(gate) * up at columns j (BLOCK_N / 2 of them),
    rounded as silu_mul_ref rounds (the GEMM output first, then silu, then the product)."""
    dt = x_ptr.dtype.element_ty
    if SILU:
        g, u = tl.split(tl.reshape(o.to(dt).to(tl.float32), [BLOCK_N // 2, 2]))
        a = ((g * tl.sigmoid(g)).to(dt).to(tl.float32) * u).to(dt)
        j = slab * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        tl.store(out_ptr + j, a.to(out_ptr.dtype.element_ty), mask=j < HALF)
    else:
        tl.store(out_ptr + n, o.to(dt).to(out_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def _rows(pid, ROPE: tl.constexpr, ROPE_ROWS, HALF: tl.constexpr, BLOCK_N: tl.constexpr):
    """The weight rows a program owns. With ROPE, a program in the q/k region takes BLOCK_N / 2 rotation PAIRS
    (rows j and j + D/2 of a head, interleaved), so its epilogue can rotate them; v rows stay contiguous."""
    return _row_ids(pid, tl.arange(0, BLOCK_N), ROPE, ROPE_ROWS, HALF, BLOCK_N)


@triton.jit
def _row_ids(pid, i, ROPE: tl.constexpr, ROPE_ROWS, HALF: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row i (0 <= i < BLOCK_N) of slab pid (see _rows). Pairing also serves the SiLU epilogue: with ROPE_ROWS = N
    and HALF = N / 2 = I, slab pid holds gate rows j and up rows I + j of a packed gate_up weight."""
    n = pid * BLOCK_N + i
    if ROPE:
        pair = pid * (BLOCK_N // 2) + i // 2
        n = tl.where(pid * BLOCK_N < ROPE_ROWS, (pair // HALF) * (2 * HALF) + (i % 2) * HALF + pair % HALF, n)
    return n


@triton.jit
def _rotate(x1, x2, j, pos, cs_ptr, stride_cs, apply, out_ptr, HALF: tl.constexpr):
    """RoPE on (x1, x2) = (dim j, dim j + D/2) values rounded to the output dtype; cos/sin rounded to it too, as the
    reference does."""
    dt = out_ptr.dtype.element_ty
    c = tl.load(cs_ptr + pos * stride_cs + j).to(dt).to(tl.float32)
    s = tl.load(cs_ptr + pos * stride_cs + HALF + j).to(dt).to(tl.float32)
    return tl.where(apply, x1 * c - x2 * s, x1), tl.where(apply, x2 * c + x1 * s, x2)


@triton.jit
def _prefetch_rows_l2(w_ptr, pid, N, stride_wn, ROPE: tl.constexpr, ROPE_ROWS, HALF: tl.constexpr,
                      BLOCK_N: tl.constexpr, PREFETCH_BYTES: tl.constexpr):
    """Ask L2 for the first PREFETCH_BYTES of each of this program's weight rows: one `cp.async.bulk.prefetch.L2`
    per row, issued by lane i < BLOCK_N of warp 0 (a [32] tensor has one element per lane, repeated in every warp;
    the other warps and lanes are predicated off). A hint: no data returns, nothing waits for it."""
    i = tl.arange(0, 32)
    n = _row_ids(pid, i % BLOCK_N, ROPE, ROPE_ROWS, HALF, BLOCK_N)
    own = ((i < BLOCK_N) & (n < N)).to(tl.int32)
    size = tl.full([32], PREFETCH_BYTES, tl.int32)
    tl.inline_asm_elementwise(
        "{ .reg .pred p, q; .reg .u32 t; mov.u32 t, %tid.x; setp.lt.u32 q, t, 32; setp.ne.s32 p, $2, 0; "
        "and.pred p, p, q; @p cp.async.bulk.prefetch.L2.global [$1], $3; mov.u32 $0, 0; }",
        "=r,l,r,r", [w_ptr + n.to(tl.int64) * stride_wn, own, size], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def skinny_gemv_kernel(x_ptr, r_ptr, nw_ptr, ro_ptr, w_ptr, out_ptr, pos_ptr, cs_ptr, N, stride_wn, eps, stride_cs,
                       ROPE_ROWS, K: tl.constexpr, MODE: tl.constexpr, HAS_RES: tl.constexpr, ROPE: tl.constexpr,
                       HALF: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr = False,
                       PREFETCH_BYTES: tl.constexpr = 0, SILU: tl.constexpr = False):
    """M == 1: each program owns BLOCK_N weight rows; fp32 partial products pile up in registers, summed once.
    The first weight tile is loaded BEFORE waiting for the previous kernel (PDL: weights never change, so that load
    overlaps the previous kernel's tail; common/pdl.py); nothing the previous kernel writes is touched before.
    PREFETCH_BYTES > 0 (TITAN_GEMV_PREFETCH_MB, see `prefetch_bytes`) also asks L2 for that much of every row
    before the wait, so a projection that follows a light kernel (attention at B=1) streams its weights meanwhile.
    SILU (norm_linear_silu; ROPE_ROWS = N, HALF = N / 2): the rows are gate/up pairs and the epilogue stores
    silu(gate) * up, so the down projection that follows needs no prologue."""
    pid = tl.program_id(0)
    k = tl.arange(0, BLOCK_K)
    PAIRED: tl.constexpr = ROPE or SILU
    if PREFETCH_BYTES > 0:
        _prefetch_rows_l2(w_ptr, pid, N, stride_wn, PAIRED, ROPE_ROWS, HALF, BLOCK_N, PREFETCH_BYTES)
    n = _rows(pid, PAIRED, ROPE_ROWS, HALF, BLOCK_N)
    n_mask = n < N
    rows = w_ptr + n.to(tl.int64)[:, None] * stride_wn  # [BLOCK_N, 1]
    k0_mask = k < K
    w0 = tl.load(rows + k[None, :], mask=n_mask[:, None] & k0_mask[None, :], other=0.0,
                 eviction_policy="evict_first")  # [BLOCK_N, BLOCK_K]: 128-bit loads along K
    pdl_wait(PDL)
    inv = 1.0
    if MODE == 1 and K <= BLOCK_K:  # the whole row in one tile: one pass over it
        x0 = _normed_row(x_ptr, r_ptr, nw_ptr, ro_ptr, k, k0_mask, pid == 0, eps, K, HAS_RES)
    else:
        if MODE == 1:  # pass 1 over the (L2-resident) input row: its rms
            ss = tl.zeros([BLOCK_K], tl.float32)
            for k0 in range(0, K, BLOCK_K):
                ss += _squares(x_ptr, r_ptr, ro_ptr, k0 + k, k0 + k < K, pid == 0, HAS_RES)
            inv = tl.rsqrt(tl.sum(ss, axis=0) / K + eps)
        x0 = _activation(x_ptr, r_ptr, nw_ptr, k, k, k0_mask, inv, K, MODE, HAS_RES)
    acc = w0.to(tl.float32) * x0[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        kk = tl.max_contiguous(tl.multiple_of(k0 + k, BLOCK_K), BLOCK_K)
        k_mask = kk < K
        xv = _activation(x_ptr, r_ptr, nw_ptr, kk, kk, k_mask, inv, K, MODE, HAS_RES)  # [BLOCK_K]
        wv = tl.load(rows + kk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0,
                     eviction_policy="evict_first")  # [BLOCK_N, BLOCK_K]
        acc += wv.to(tl.float32) * xv[None, :]
    o = tl.sum(acc, axis=1)  # [BLOCK_N]
    if ROPE:  # rotate the pairs in registers: qkv is rounded first, as the unfused GEMM's output is
        dt = out_ptr.dtype.element_ty
        x1, x2 = tl.split(tl.reshape(o.to(dt).to(tl.float32), [BLOCK_N // 2, 2]))
        j = (pid * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)) % HALF
        pos = tl.load(pos_ptr).to(tl.int64)
        y1, y2 = _rotate(x1, x2, j, pos, cs_ptr, stride_cs, pid * BLOCK_N < ROPE_ROWS, out_ptr, HALF)
        o = tl.reshape(tl.join(y1, y2), [BLOCK_N])
    _store_rows(x_ptr, out_ptr, o, pid, n, n_mask, SILU, HALF, BLOCK_N)


@triton.jit
def skinny_gemv_persistent_kernel(x_ptr, r_ptr, nw_ptr, ro_ptr, w_ptr, out_ptr, stride_wn, eps, N: tl.constexpr,
                                  NUM_SMS: tl.constexpr, K: tl.constexpr,
                                  MODE: tl.constexpr, HAS_RES: tl.constexpr, SILU: tl.constexpr, HALF: tl.constexpr,
                                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PPS: tl.constexpr,
                                  PDL: tl.constexpr = False):
    """M == 1, persistent: a grid of G programs (PPS per SM, `persistent_grid`) each streams slabs pid, pid + G, ...
    of BLOCK_N rows as one flat sequence of [BLOCK_N, BLOCK_K] tiles, loading tile t + 1 before it multiplies tile t
    (two tiles in flight per program, never a gap between slabs), and reduces + stores a slab at its last K tile.
    Against one program per slab (skinny_gemv_kernel) there are no waves: every program is resident from the start,
    does the same number of slabs (+-1), and computes the prologue (the norm's rms, or a one-tile row) once instead
    of once per slab. No RoPE epilogue and no L2 prefetch here (the regular kernel keeps those).
    NOTE (measured, H100, gemv_chain_s1208b_h100.json): inside the B=1 step it lost to the regular kernel's
    whole-row tiles in every projection (e.g. gate_up 0.922 vs 0.917 ms a step, all projections 0.964 vs 0.935
    ms/token). Likely (not profiled): PDL already overlaps each GEMV's first wave with the kernel before, which a
    single-wave grid cannot beat. Opt-in (TITAN_GEMV_PERSISTENT=1, or a pinned tile with PPS > 0) for other shapes
    and GPUs."""
    pid = tl.program_id(0)
    SLABS: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
    # the grid, as persistent_grid computes it on the host (N and the SM count are compile-time: one weight shape
    # per compilation, as the autotuner keys it anyway)
    G: tl.constexpr = (SLABS + (SLABS + NUM_SMS * PPS - 1) // (NUM_SMS * PPS) - 1) // (
        (SLABS + NUM_SMS * PPS - 1) // (NUM_SMS * PPS))
    KT: tl.constexpr = (K + BLOCK_K - 1) // BLOCK_K
    k = tl.arange(0, BLOCK_K)
    i = tl.arange(0, BLOCK_N)
    # every program walks the same number of tiles; a slab past the end has rows >= N, so its loads and stores are
    # masked off (free of memory traffic). The bound depends on no program id (the interpreter needs that too).
    TOTAL: tl.constexpr = (SLABS + G - 1) // G * KT
    n = _row_ids(pid, i, SILU, N, HALF, BLOCK_N)
    w = tl.load(w_ptr + n.to(tl.int64)[:, None] * stride_wn + k[None, :],
                mask=(n < N)[:, None] & (k < K)[None, :], other=0.0, eviction_policy="evict_first")
    pdl_wait(PDL)  # the first tile was requested before the wait: weights never change
    inv = 1.0
    if MODE == 1 and KT == 1:
        xv = _normed_row(x_ptr, r_ptr, nw_ptr, ro_ptr, k, k < K, pid == 0, eps, K, HAS_RES)
    else:
        if MODE == 1:
            ss = tl.zeros([BLOCK_K], tl.float32)
            for k0 in range(0, K, BLOCK_K):
                ss += _squares(x_ptr, r_ptr, ro_ptr, k0 + k, k0 + k < K, pid == 0, HAS_RES)
            inv = tl.rsqrt(tl.sum(ss, axis=0) / K + eps)
        xv = _activation(x_ptr, r_ptr, nw_ptr, k, k, k < K, inv, K, MODE, HAS_RES)  # tile 0's input
    acc = tl.zeros([BLOCK_N], tl.float32)
    for t in range(0, TOTAL):
        t1 = t + 1  # request the next tile first
        n1 = _row_ids(pid + (t1 // KT) * G, i, SILU, N, HALF, BLOCK_N)
        k1 = (t1 % KT) * BLOCK_K + k
        w_next = tl.load(w_ptr + n1.to(tl.int64)[:, None] * stride_wn + k1[None, :],
                         mask=(n1 < N)[:, None] & (k1 < K)[None, :] & (t1 < TOTAL), other=0.0,
                         eviction_policy="evict_first")
        if KT > 1:
            kk = (t % KT) * BLOCK_K + k
            xv = _activation(x_ptr, r_ptr, nw_ptr, kk, kk, kk < K, inv, K, MODE, HAS_RES)
        acc += tl.sum(w.to(tl.float32) * xv[None, :], axis=1)  # [BLOCK_N]: a per-tile sum keeps registers low
        if t % KT == KT - 1:  # the slab's last tile: store, start the next slab
            slab = pid + (t // KT) * G
            n = _row_ids(slab, i, SILU, N, HALF, BLOCK_N)
            _store_rows(x_ptr, out_ptr, acc, slab, n, n < N, SILU, HALF, BLOCK_N)
            acc = tl.zeros([BLOCK_N], tl.float32)
        w = w_next


@triton.jit
def skinny_gemm_kernel(x_ptr, r_ptr, nw_ptr, ro_ptr, w_ptr, out_ptr, pos_ptr, cs_ptr, M, N, stride_xm, stride_wn,
                       stride_om, eps, stride_cs, ROPE_ROWS, K: tl.constexpr, MODE: tl.constexpr,
                       HAS_RES: tl.constexpr, ROPE: tl.constexpr, HALF: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, M_PAD: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr):
    """2 <= M <= M_PAD: acc^T [BLOCK_N, M_PAD] += w [BLOCK_N, BLOCK_K] @ x^T [BLOCK_K, M_PAD] on the tensor cores."""
    pid = tl.program_id(0)
    m = tl.arange(0, M_PAD)
    k = tl.arange(0, BLOCK_K)
    m_mask = m < M
    inv = tl.full([1, M_PAD], 1.0, tl.float32)
    if MODE == 1:
        ss = tl.zeros([BLOCK_K, M_PAD], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + k
            ss += _squares(x_ptr, r_ptr, ro_ptr, m[None, :] * stride_xm + kk[:, None],
                           m_mask[None, :] & (kk < K)[:, None], pid == 0, HAS_RES)
        inv = tl.rsqrt(tl.sum(ss, axis=0) / K + eps)[None, :]  # [1, M_PAD]
    n = _rows(pid, ROPE, ROPE_ROWS, HALF, BLOCK_N)
    n_mask = n < N
    rows = w_ptr + n.to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros([BLOCK_N, M_PAD], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = tl.max_contiguous(tl.multiple_of(k0 + k, BLOCK_K), BLOCK_K)
        k_mask = kk < K
        wv = tl.load(rows + kk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_K]
        xt = _activation(x_ptr, r_ptr, nw_ptr, m[None, :] * stride_xm + kk[:, None], kk[:, None],
                         m_mask[None, :] & k_mask[:, None], inv, K, MODE, HAS_RES)  # [BLOCK_K, M_PAD] fp32
        if DOT_F32:
            wv = wv.to(tl.float32)
        acc = tl.dot(wv, xt.to(wv.dtype), acc, input_precision=PREC)
    if ROPE:
        dt = out_ptr.dtype.element_ty
        pairs = tl.permute(tl.reshape(acc.to(dt).to(tl.float32), [BLOCK_N // 2, 2, M_PAD]), (0, 2, 1))
        x1, x2 = tl.split(pairs)  # [BLOCK_N / 2, M_PAD]
        j = ((pid * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)) % HALF)[:, None]
        pos = tl.load(pos_ptr + m, mask=m_mask, other=0).to(tl.int64)[None, :]  # [1, M_PAD]
        y1, y2 = _rotate(x1, x2, j, pos, cs_ptr, stride_cs, pid * BLOCK_N < ROPE_ROWS, out_ptr, HALF)
        acc = tl.reshape(tl.permute(tl.join(y1, y2), (0, 2, 1)), [BLOCK_N, M_PAD])
    tl.store(out_ptr + m[None, :] * stride_om + n[:, None], acc.to(out_ptr.dtype.element_ty),
             mask=m_mask[None, :] & n_mask[:, None])


def _bench(fn, quantiles):  # autotuning timer: short, L2 flushed between runs (weights never sit in L2 in a model)
    return triton.testing.do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


_GEMV_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w)
                 for bn, bk, w in [(2, 1024, 4), (2, 2048, 4), (4, 512, 4), (4, 1024, 4), (4, 2048, 8), (8, 512, 4),
                                   (8, 1024, 8), (16, 512, 8)]]
_GEMM_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
                 for bn, bk, w, s in [(16, 256, 4, 3), (16, 512, 4, 3), (32, 256, 4, 3), (64, 128, 4, 4)]]


# The persistent kernel's candidates: (BLOCK_N, BLOCK_K, warps, programs per SM). BLOCK_K = K's power of two (one
# tile per slab) or less; registers hold two weight tiles a program, so PPS x warps stays within what fits an SM.
_PERSISTENT_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "PPS": pps}, num_warps=w)
                       for bn, bk, w, pps in [(2, 2048, 4, 4), (2, 2048, 4, 8), (4, 2048, 8, 2), (4, 2048, 8, 4),
                                              (8, 2048, 8, 2), (2, 1024, 4, 8), (4, 1024, 4, 4), (4, 1024, 4, 8),
                                              (8, 1024, 8, 2), (4, 512, 4, 8), (8, 512, 4, 4)]]


def tile_candidates() -> list[tuple[int, int, int, int]]:
    """(BLOCK_N, BLOCK_K, warps, PPS) of every M == 1 candidate: the regular kernel's autotuner set (PPS 0), then
    the persistent kernel's (sweep_gemv_chain times them all inside the step)."""
    return ([(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, 0) for c in _GEMV_CONFIGS]
            + [(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.kwargs["PPS"]) for c in _PERSISTENT_CONFIGS])


def _prune(configs, named_args, **kwargs):
    """With the RoPE epilogue a program's BLOCK_N/2 pairs must fit one head (with SiLU, HALF = I, always true for
    the candidates); a tile wider than K's power of two only wastes lanes."""
    k_pad = triton.next_power_of_2(kwargs["K"])
    fits = [c for c in configs if not (kwargs.get("ROPE") or kwargs.get("SILU"))
            or kwargs["HALF"] % (c.kwargs["BLOCK_N"] // 2) == 0]
    if "PPS" not in configs[0].kwargs:  # the regular kernel keeps every tile (its tuning is unchanged)
        return fits
    return [c for c in fits if c.kwargs["BLOCK_K"] <= k_pad] or [min(fits, key=lambda c: c.kwargs["BLOCK_K"])]


# Pinned M == 1 tiles, (N, K, MODE) -> (BLOCK_N, BLOCK_K, num_warps, PPS), bypassing the default. Why: the autotuner
# times each candidate ALONE (do_bench), where loading weights before the PDL wait gains nothing; in the decode step
# each GEMV follows another kernel, and a tile that prefetches its whole slab before the wait may win there while
# losing alone. sweep_gemv_chain.py times the candidates inside the real B=1 step and pins them this way. Set from
# TITAN_GEMV_TILES="2048x2048x0=2,2048,4;2560x2048x1=2,2048,4" at import, or by assigning PINNED_TILES.
GEMV_TILES_ENV = "TITAN_GEMV_TILES"


def parse_tiles(spec: str) -> dict:
    """"NxKxMODE=BLOCK_N,BLOCK_K,WARPS[,PPS];..." -> {(N, K, MODE): (BLOCK_N, BLOCK_K, WARPS, PPS)}; PPS > 0 pins
    the persistent kernel with PPS programs per SM, 0 (or left out) the regular one. Clear errors otherwise."""
    out = {}
    for item in filter(None, (x.strip() for x in spec.split(";"))):
        try:
            shape, tile = item.split("=")
            n, k, mode = (int(v) for v in shape.split("x"))
            vals = [int(v) for v in tile.split(",")]
            if len(vals) not in (3, 4):
                raise ValueError
            bn, bk, w, pps = (*vals, 0)[:4]
        except ValueError:
            raise ValueError(f"{GEMV_TILES_ENV}: want 'NxKxMODE=BLOCK_N,BLOCK_K,WARPS[,PPS]' items separated by ';', "
                             f"got {item!r}") from None
        if bn & (bn - 1) or bk & (bk - 1) or w & (w - 1) or mode not in (0, 1, 2) or pps < 0:
            raise ValueError(f"{GEMV_TILES_ENV}: BLOCK_N, BLOCK_K and WARPS must be powers of two, MODE 0, 1 or 2 and "
                             f"PPS >= 0, got {item!r}")
        out[(n, k, mode)] = (bn, bk, w, pps)
    return out


PINNED_TILES: dict = parse_tiles(os.environ.get(GEMV_TILES_ENV, ""))

# The M == 1 tile when nothing is pinned: whole rows, chosen in the step, not alone (TITAN_GEMV_AUTOTUNE=1 brings the
# autotuner back). NOTE (measured, H100, results/gemv_chain_s1208b_h100.json: every candidate pinned in turn inside
# the captured B=1 step, the SiLU epilogue on): the winners were the whole-row tiles -- BLOCK_K = K (one tile: the
# program requests its entire slab before the PDL wait, and the norm prologue reads its row once) -- with 2 rows and
# 4 warps for qkv / o, 4 rows and 8 warps for gate_up, down (K = 5632: 2048-wide tiles) and lm_head (noise there);
# all pinned, the step took 0.895 ms against 0.927 with the autotuner's picks, which it times alone, where loading
# before the wait buys nothing (it had picked (2, 1024, 4) for qkv: 22 us of the 32). The persistent kernel lost in
# every shape (best: o (2, 2048, 4, 8), 0.920 vs 0.918). On the H200 the older sweep (gemv_chain_gpu.json, before the
# one-pass norm and the SiLU epilogue) was within its noise for these tiles, except gate_up (4, 1024, 4): 1.4 us.
AUTOTUNE_ENV = "TITAN_GEMV_AUTOTUNE"


def step_tile(n: int, k: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, warps) of the M == 1 GEMV in the decode step: whole rows up to K = 2048, 2 rows / 4 warps
    for narrow projections (N <= 4096) and 4 rows / 8 warps for wide ones or K > 2048 (see the NOTE above)."""
    bk = min(2048, triton.next_power_of_2(k))
    return (4, bk, 8) if k > 2048 or n > 4096 else (2, bk, 4)


def env_switch(name: str, default: bool) -> bool:
    """An on/off environment switch read at call time: '1' on, '0' off, unset `default`, anything else a clear
    error (AUTOTUNE_ENV, PERSISTENT_ENV here; fused_model's SILU_EPILOGUE_ENV)."""
    raw = os.environ.get(name, "").strip()
    if raw not in ("", "0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {raw!r}")
    return default if raw == "" else raw == "1"


def autotune_on() -> bool:
    return env_switch(AUTOTUNE_ENV, False)

# L2 prefetch before the PDL wait (skinny_gemv_kernel's PREFETCH_BYTES), off unless TITAN_GEMV_PREFETCH_MB > 0.
# NOTE (why, and why a budget): at B=1 the decode attention (~4 us a layer on the H200) barely touches DRAM, and each
# small projection pays ~1.5 us of ramp above its bandwidth time (fused_kernels_h200: o at 2.38 TB/s alone). With
# PDL the next GEMV's programs are resident while the previous kernel runs; a bulk L2 prefetch of their rows there
# turns that idle DRAM time into the next projection's reads. L2 holds 50 MB (H100 / H200): prefetching a 46 MB
# gate_up whole would evict its own first rows, so each launch prefetches at most the budget, split evenly over the
# rows (the start of each row; the rest streams as before). Read at launch time, like TITAN_PDL: a CUDA graph keeps
# what was set when it was captured. Measured (bench_latency's '+l2pf' variants): neutral on the H200, slower on the
# H100 (latency_l2pf_s1206_h100.json), so it stays off.
PREFETCH_ENV = "TITAN_GEMV_PREFETCH_MB"


def prefetch_bytes(n: int, k: int, elem_bytes: int, pdl: bool) -> int:
    """Bytes of each of the n weight rows (k elements) to prefetch into L2 before the PDL wait: the budget
    (TITAN_GEMV_PREFETCH_MB) split over the rows, rounded down to 128-byte lines, at most the whole row; 0 = off
    (no budget, no PDL, or under the interpreter, which cannot run the PTX)."""
    raw = os.environ.get(PREFETCH_ENV, "").strip()
    if not pdl or not raw or interpreting():
        return 0
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"{PREFETCH_ENV} must be a number of MB, got {raw!r}") from None
    row = k * elem_bytes
    per_row = int(mb * 2 ** 20 / n) // 128 * 128
    return max(0, min(row // 16 * 16, per_row))

# HAS_RES is left out of the keys on purpose: layer 0's norm (no residual yet) reuses the tuned tile, one fewer tuning
skinny_gemv_tuned = triton.autotune(_GEMV_CONFIGS, key=["N", "K", "MODE", "ROPE", "SILU"], do_bench=_bench,
                                    prune_configs_by={"early_config_prune": _prune})(skinny_gemv_kernel)
skinny_gemv_persistent_tuned = triton.autotune(_PERSISTENT_CONFIGS, key=["N", "K", "MODE", "SILU"], do_bench=_bench,
                                               prune_configs_by={"early_config_prune": _prune}
                                               )(skinny_gemv_persistent_kernel)
skinny_gemm_tuned = triton.autotune(_GEMM_CONFIGS, key=["N", "K", "MODE", "ROPE", "M_PAD"], do_bench=_bench,
                                    prune_configs_by={"early_config_prune": _prune})(skinny_gemm_kernel)


# The persistent M == 1 kernel (skinny_gemv_persistent_kernel) instead of one program per slab, for GEMVs without
# the RoPE epilogue or the L2 prefetch. TITAN_GEMV_PERSISTENT=1 / 0 forces it on / off; unset, PERSISTENT_DEFAULT
# decides. A pinned tile with PPS > 0 (TITAN_GEMV_TILES) takes it for that shape whatever the switch says. Read at
# launch time: a CUDA graph keeps what was set when it was captured.
PERSISTENT_ENV = "TITAN_GEMV_PERSISTENT"
PERSISTENT_DEFAULT = False


def persistent_on() -> bool:
    return env_switch(PERSISTENT_ENV, PERSISTENT_DEFAULT)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(t: torch.Tensor) -> int:
    """SMs of t's GPU (4 under the interpreter, so its tests run several programs over several slabs each)."""
    if not t.is_cuda:
        return 4
    return _sm_count(t.device.index if t.device.index is not None else torch.cuda.current_device())


def persistent_grid(n: int, block_n: int, pps: int, sms: int) -> int:
    """Programs for n rows in slabs of block_n at pps programs per SM: at most sms * pps, and as few as give every
    program the same number of slabs (+-1 only in the last round): slabs / ceil(slabs / (sms * pps))."""
    slabs = triton.cdiv(n, block_n)
    return triton.cdiv(slabs, triton.cdiv(slabs, sms * pps))


def _skinny(name, x, w, mode, k, residual=None, norm_w=None, eps=0.0, tune=True, rope=None, silu=False, out=None):
    """Checks shared by the entry points, then one launch. Returns (out [M, N] (or [M, N / 2] with silu: the
    SiLU-and-mul of the gate/up halves), x + residual or None).
    rope: None or (positions [M], cos_sin_cache [P, D], rows to rotate, D), checked by the caller.
    out: an fp32 [1, N] buffer the M == 1 GEMV (MODE 0) stores into, values rounded to x's dtype first."""
    _check(name, *(t for t in (x, w, residual, norm_w) if t is not None))
    if x.dim() != 2 or w.dim() != 2 or w.shape[1] != k:
        raise ValueError(f"{name}: want x [M, K] and w [N, K] (nn.Linear layout), got x{tuple(x.shape)} "
                         f"w{tuple(w.shape)}")
    if not 1 <= x.shape[0] <= SKINNY_KERNEL_MAX_M:
        raise ValueError(f"{name}: M={x.shape[0]} rows; the skinny kernel takes 1..{SKINNY_KERNEL_MAX_M} "
                         "(use linear())")
    if any(t is not None and t.dtype != x.dtype for t in (w, residual, norm_w)):
        raise ValueError(f"{name}: x, w (and residual, norm weight) must share one dtype; cast them")
    if mode and not x.is_contiguous():
        raise ValueError(f"{name}: x must be contiguous (call .contiguous())")
    m, n = x.shape[0], w.shape[0]
    if silu and (n % 2 or rope is not None):
        raise ValueError(f"{name}: the SiLU epilogue wants an even number of gate_up rows and no RoPE, got N={n}")
    if silu and m > 1:  # the tensor-core path has no SiLU epilogue: its GEMM, then the SiLU-and-mul kernel
        gu, r_out = _skinny(name, x, w, mode, k, residual, norm_w, eps, tune)
        return silu_mul(gu), r_out
    if out is not None:
        if m != 1 or mode or silu or rope is not None:
            raise ValueError(f"{name}: out= is for the plain M == 1 GEMV (the logits), got M={m}")
        if out.shape != (1, n) or out.dtype != torch.float32 or out.device != x.device or not out.is_contiguous():
            raise ValueError(f"{name}: out must be a contiguous float32 [1, {n}] tensor on {x.device}, got "
                             f"{out.dtype} {tuple(out.shape)} on {out.device}")
    else:
        out = torch.empty((m, n // 2 if silu else n), dtype=x.dtype, device=x.device)
    r_out = torch.empty_like(x) if residual is not None else None
    pos, cs, rope_rows, d = rope if rope is not None else (x, x, n if silu else 0, n if silu else 2)
    ptrs = (x, residual if residual is not None else x, norm_w if norm_w is not None else x,
            r_out if r_out is not None else x, w, out, pos, cs)
    flags = dict(K=k, MODE=mode, HAS_RES=residual is not None, ROPE=rope is not None, HALF=d // 2)
    fixed_bn = lambda bn: min(bn, d) if rope is not None else bn  # noqa: E731  (pairs must not cross a head)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    if m == 1:
        pdl, launch = pdl_args(x)
        prefetch = prefetch_bytes(n, k, w.element_size(), pdl)
        pinned = PINNED_TILES.get((n, k, mode))
        pps = pinned[3] if pinned is not None and len(pinned) > 3 else 0
        if rope is None and not prefetch and (pps > 0 or (pinned is None and persistent_on())):
            _persistent(ptrs, n, w, eps, flags, silu, pinned if pps else None, tune, pdl, launch)
            return out, r_out
        args = (*ptrs, n, w.stride(0), eps, cs.stride(0), rope_rows)
        launch = dict(launch, PREFETCH_BYTES=prefetch, SILU=silu, PDL=pdl)
        if pinned is None and tune and not interpreting() and autotune_on():
            skinny_gemv_tuned[grid](*args, **flags, **launch)
            return out, r_out
        bn, bk, warps = (pinned[:3] if pinned is not None else (4, 32, 4) if interpreting()
                         else (8, 512, 4) if not tune else step_tile(n, k))
        skinny_gemv_kernel[grid](*args, **flags, BLOCK_N=fixed_bn(bn), BLOCK_K=bk, num_warps=warps, **launch)
        return out, r_out
    args = (*ptrs, m, n, x.stride(0), w.stride(0), out.stride(0), eps, cs.stride(0), rope_rows)
    prec = "ieee" if x.dtype == torch.float32 else "tf32"  # tf32 is ignored for 16-bit inputs; fp32 stays exact
    if interpreting():
        skinny_gemm_kernel[grid](*args, **flags, BLOCK_N=fixed_bn(16), BLOCK_K=32, M_PAD=16, DOT_F32=True,
                                 PREC="ieee")
    elif not tune:
        skinny_gemm_kernel[grid](*args, **flags, BLOCK_N=fixed_bn(32), BLOCK_K=256, M_PAD=16, DOT_F32=False,
                                 PREC=prec, num_warps=4, num_stages=3)
    else:
        skinny_gemm_tuned[grid](*args, **flags, M_PAD=16, DOT_F32=False, PREC=prec)
    return out, r_out


def _persistent(ptrs, n, w, eps, flags, silu, pinned, tune, pdl, launch):
    """One launch of the persistent M == 1 kernel: pinned (BLOCK_N, BLOCK_K, WARPS, PPS), else autotuned (a fixed
    small tile under the interpreter or with tune=False)."""
    x, r, nw, ro, _, out = ptrs[:6]
    sms = num_sms(x)
    args = (x, r, nw, ro, w, out, w.stride(0), eps)
    kw = dict(N=n, NUM_SMS=sms, K=flags["K"], MODE=flags["MODE"], HAS_RES=flags["HAS_RES"], SILU=silu,
              HALF=n // 2 if silu else 1, PDL=pdl, **launch)
    grid = lambda meta: (persistent_grid(n, meta["BLOCK_N"], meta["PPS"], sms),)  # noqa: E731
    if pinned is None and (interpreting() or not tune):
        pinned = (4, 32, 4, 2) if interpreting() else (4, 2048 if flags["K"] <= 2048 else 1024, 8, 2)
    if pinned is not None:
        bn, bk, warps, pps = pinned
        skinny_gemv_persistent_kernel[grid](*args, **kw, BLOCK_N=bn, BLOCK_K=bk, PPS=pps, num_warps=warps)
    else:
        skinny_gemv_persistent_tuned[grid](*args, **kw)


def linear_small_m(x: torch.Tensor, w: torch.Tensor, tune: bool = True,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] (M <= 16) @ w [N, K]^T -> [M, N] in x's dtype, fp32 accumulation. Autotunes on first use per
    (N, K, dtype, path) unless tune=False (one fixed tile: for one-off shapes, where tuning costs more than it
    saves). out: (M == 1) an fp32 [1, N] buffer to store into, holding exactly `linear_small_m(x, w).float()` --
    the logits conversion without its own kernel."""
    return _skinny("linear_small_m", x, w, 0, x.shape[-1], tune=tune, out=out)[0]


def linear_small_m_ref(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w)


def norm_linear(x: torch.Tensor, norm_w: torch.Tensor, eps: float, w: torch.Tensor,
                residual: torch.Tensor | None = None, tune: bool = True):
    """rms_norm(x [+ residual]) * norm_w @ w^T in one kernel (M <= 16). Returns (out [M, N], x + residual), the
    second being x itself when residual is None."""
    if norm_w.shape != (x.shape[-1],) or (residual is not None and residual.shape != x.shape):
        raise ValueError(f"norm_linear: want norm_w [K] and residual like x {tuple(x.shape)}, got "
                         f"{tuple(norm_w.shape)} and {None if residual is None else tuple(residual.shape)}")
    out, r = _skinny("norm_linear", x, w, 1, x.shape[-1], residual, norm_w, eps, tune)
    return out, (x if r is None else r)


def norm_linear_ref(x, norm_w, eps, w, residual=None):
    if residual is None:
        return F.linear(rms_norm_ref(x, norm_w, eps), w), x
    y, r = rms_norm_ref(x, norm_w, eps, residual)
    return F.linear(y, w), r


def norm_linear_rope(x: torch.Tensor, norm_w: torch.Tensor, eps: float, w: torch.Tensor, positions: torch.Tensor,
                     cos_sin_cache: torch.Tensor, num_q_heads: int, num_kv_heads: int, head_dim: int,
                     residual: torch.Tensor | None = None, tune: bool = True):
    """norm_linear into the packed qkv [M, (Hq+2Hkv)*D], with rope_qk applied in the GEMM's epilogue (one kernel
    for norm, projection and RoPE). Returns (qkv, x + residual)."""
    _check_rope((x.shape[0], w.shape[0]), x.device, positions, cos_sin_cache, num_q_heads, num_kv_heads, head_dim,
                "norm_linear_rope")
    if head_dim & (head_dim - 1) or cos_sin_cache.dtype != torch.float32:
        raise ValueError(f"norm_linear_rope: head_dim must be a power of two (got {head_dim}) and the cos/sin cache "
                         f"float32 (got {cos_sin_cache.dtype}; see make_cos_sin_cache)")
    if norm_w.shape != (x.shape[-1],) or (residual is not None and residual.shape != x.shape):
        raise ValueError(f"norm_linear_rope: want norm_w [K] and residual like x {tuple(x.shape)}")
    rope = (positions, cos_sin_cache, (num_q_heads + num_kv_heads) * head_dim, head_dim)
    out, r = _skinny("norm_linear_rope", x, w, 1, x.shape[-1], residual, norm_w, eps, tune, rope)
    return out, (x if r is None else r)


def norm_linear_rope_ref(x, norm_w, eps, w, positions, cos_sin_cache, num_q_heads, num_kv_heads, head_dim,
                         residual=None):
    qkv, r = norm_linear_ref(x, norm_w, eps, w, residual)
    return rope_qk_ref(qkv, positions, cos_sin_cache, num_q_heads, num_kv_heads, head_dim), r


def norm_linear_silu(x: torch.Tensor, norm_w: torch.Tensor, eps: float, w: torch.Tensor,
                     residual: torch.Tensor | None = None, tune: bool = True):
    """silu_mul(norm_linear(x, norm_w, eps, w, residual)): the MLP's first half in one kernel at M == 1 (w is the
    packed gate_up [2I, K]; each program owns gate rows j and up rows I + j and stores silu(gate) * up). Returns
    (act [M, I], x + residual); act is what silu_mul_linear's prologue would have computed, bit for bit, so the
    down projection that follows is a plain GEMV. M > 1: the GEMM, then the SiLU-and-mul kernel."""
    if norm_w.shape != (x.shape[-1],) or (residual is not None and residual.shape != x.shape):
        raise ValueError(f"norm_linear_silu: want norm_w [K] and residual like x {tuple(x.shape)}, got "
                         f"{tuple(norm_w.shape)} and {None if residual is None else tuple(residual.shape)}")
    out, r = _skinny("norm_linear_silu", x, w, 1, x.shape[-1], residual, norm_w, eps, tune, silu=True)
    return out, (x if r is None else r)


def norm_linear_silu_ref(x, norm_w, eps, w, residual=None):
    gate_up, r = norm_linear_ref(x, norm_w, eps, w, residual)
    return silu_mul_ref(gate_up), r


def silu_mul_linear(gate_up: torch.Tensor, w: torch.Tensor, tune: bool = True) -> torch.Tensor:
    """silu(gate) * up @ w^T in one kernel: gate_up [M, 2K] (M <= 16), w [N, K] -> [M, N]."""
    if gate_up.dim() != 2 or gate_up.shape[-1] % 2:
        raise ValueError(f"silu_mul_linear: want gate_up [M, 2K] with an even width, got {tuple(gate_up.shape)}")
    return _skinny("silu_mul_linear", gate_up, w, 2, gate_up.shape[-1] // 2, tune=tune)[0]


def silu_mul_linear_ref(gate_up: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.linear(silu_mul_ref(gate_up), w)


def linear(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch: x [..., K] with at most SKINNY_MAX_M rows on CUDA (or under the interpreter) -> skinny kernel;
    otherwise F.linear (cuBLAS on the GPU). out: an fp32 [rows, N] buffer that receives the result converted
    (`out.copy_(result)`; for one row the skinny GEMV stores it itself, with no conversion kernel)."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if (x.is_cuda or interpreting()) and 1 <= rows <= SKINNY_MAX_M and x.dtype == w.dtype and x.stride(-1) == 1:
        if out is not None and rows == 1 and out.dtype == torch.float32 and out.is_contiguous():
            return linear_small_m(x.reshape(1, x.shape[-1]), w, out=out.view(1, w.shape[0])).view(out.shape)
        y = linear_small_m(x.reshape(rows, x.shape[-1]), w).view(*x.shape[:-1], w.shape[0])
    else:
        y = F.linear(x, w)
    return y if out is None else out.copy_(y)
