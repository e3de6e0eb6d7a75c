"""Paged prefill attention: a varlen batch of new tokens, causal, over cached prefix blocks plus themselves.

    q:             [T, Hq, D]   new tokens of all sequences, packed (sequence b owns rows cu_seqlens_q[b]:[b+1])
    k, v:          [T, Hkv, D]  their keys and values, written into the paged cache first (quantised if FP8)
    seq_lens:      [B] int32    tokens in the cache per sequence AFTER the write = cached prefix + new tokens
    block_tables:  [B, max_blocks] int32
A sequence whose first blocks are already cached (a shared system prompt, a resumed chat) just has seq_lens larger
than its new-token count: query i of sequence b sits at position seq_lens[b] - q_len[b] + i.

NOTE: the kernel reads every key, the new ones included, back from the paged cache rather than from the k/v
arguments. One code path then serves "no prefix", "cached prefix" and chunked prefill, and an FP8 cache's prefill
sees exactly the (quantised) keys that later decode steps will see. Key tiles left of the causal diagonal take an
unmasked loop, only the diagonal tiles pay for the mask.

NOTE (GQA packing): a program owns BLOCK_M rows of one KV head's G = Hq / Hkv query heads, packed query-major:
row r = query r // G of head kvh * G + r % G. So every K/V tile it loads serves all G heads, and a sequence with
few new tokens fills G times more of the tile. That matters in a serving step, where most sequences are decodes (one
new token) packed beside a prompt: one row per head, a 64-row tile used 1/64 and each K/V tile loaded once per
query head (G = 8 times for TinyLlama); packed, 8 rows of 64 and one load per KV head (FlashAttention's pack_gqa).
A long prompt does the same work either way (BLOCK_M rows per K/V tile).

NOTE (the grid): a grid of (query tiles of the longest sequence) x (sequences) launches max_q_len * G / BLOCK_M
programs for every sequence, and in a serving step nearly all of them exit at once: 448 decodes beside one
1,024-token prompt chunk made 128 x 449 x 4 = 230k programs per layer for ~2,300 tiles of work. Where BLOCK_M is a
multiple of G, a tile holds BQ = BLOCK_M / G queries and the grid is flat instead (as in vLLM's unified Triton
attention): sequence s owns tiles cu[s] // BQ + s .. cu[s+1] // BQ + s,
which is at least ceil(q_len / BQ) of them (at most one more, empty), so T // BQ + B programs per KV head cover
every sequence. A program finds its sequence by binary search over cu_seqlens (log2 B loads). Other G keep the
per-sequence grid, sized by max_q_len.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from common.attention import attention_ref
from common.paged_checks import require_float, require_power_of_two, values_checkable
from phase3_paged_fp8.cache_write import FP8, write_kv_cache, write_kv_cache_ref
from phase3_paged_fp8.fp8_bits import Q_LIFT_F, UNLIFT_F, e4m3_to_bf16_lowered
from phase3_paged_fp8.paged_decode import (LOG2E, check_paged_inputs, gather_kv, interpreting, tile_scales,
                                           use_bits)


@triton.jit
def _tile(acc, m_i, l_i, ks, vs, q, kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_row, n0, hi, pos, kvh, d, d_mask,
          BS: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, QUANT: tl.constexpr,
          MASKED: tl.constexpr, PREC: tl.constexpr, BITS: tl.constexpr = False):
    """One online-softmax step over keys n0 .. n0+BLOCK_N (masked: causal and n < hi). BITS: lowered e4m3 tiles
    (paged_decode_kernel's docstring; q arrives lifted by 2^64). QUANT: ks, vs are this tile's scales, loaded a
    tile ahead; returns the next tile's with the state (paged_decode's SCALES NOTE: loaded where they are used, each
    tile waited a memory latency for them)."""
    if QUANT:
        ks_t, vs_t = ks, vs
        ks, vs = tile_scales(bt_row, ks_ptr, vs_ptr, n0 + BLOCK_N, hi, kvh, BS, HKV, BLOCK_N, BITS)
    n = n0 + tl.arange(0, BLOCK_N)
    n_mask = n < hi
    blk = tl.load(bt_row + n // BS, mask=n_mask, other=0).to(tl.int64)
    slot = blk * BS + n % BS
    kv_off = slot[:, None] * (HKV * D) + kvh * D + d[None, :]
    k = tl.load(kc_ptr + kv_off, mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    if BITS:
        k = e4m3_to_bf16_lowered(k)
    else:
        k = k.to(q.dtype)
    s = tl.dot(q, tl.trans(k), input_precision=PREC)  # [BLOCK_M, BLOCK_N]
    if QUANT:
        s = s * ks_t[None, :]
    if MASKED:
        s = tl.where((n[None, :] <= pos[:, None]) & n_mask[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if QUANT:
        p = p * vs_t[None, :]
    v = tl.load(vc_ptr + kv_off, mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    if BITS:
        v = e4m3_to_bf16_lowered(v)
    else:
        v = v.to(q.dtype)
    acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=PREC)
    return acc, m_new, l_i, ks, vs


@triton.jit
def _sequence_of_tile(cu_ptr, num_seqs, t, BQ: tl.constexpr):
    """The sequence owning flat query tile t: the last s with cu[s] // BQ + s <= t (a binary search over cu)."""
    lo = t * 0  # an int32 tensor: the loop-carried values keep one type
    hi = lo + num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(cu_ptr + mid) // BQ + mid <= t:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def paged_prefill_kernel(q_ptr, kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_ptr, cu_ptr, lens_ptr, o_ptr,
                         stride_qt, stride_qh, stride_ot, stride_oh, stride_bt, sm_scale_log2, num_seqs,
                         BS: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr,
                         BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         QUANT: tl.constexpr, DOT_F32: tl.constexpr,
                         PREC: tl.constexpr, SKIP_SINGLE: tl.constexpr = False, FLAT: tl.constexpr = False,
                         BITS: tl.constexpr = False):
    kvh = tl.program_id(1)
    if FLAT:  # one grid row per query tile of any sequence (NOTE on the grid); the last tiles start first
        t = tl.num_programs(0) - 1 - tl.program_id(0)
        b = _sequence_of_tile(cu_ptr, num_seqs, t, BLOCK_M // G)
        q_start = tl.load(cu_ptr + b)
        mt = t - (q_start // (BLOCK_M // G) + b)
    else:
        mt = tl.num_programs(0) - 1 - tl.program_id(0)  # the longest (most causal work) query tiles start first
        b = tl.program_id(2)
        q_start = tl.load(cu_ptr + b)
    q_len = tl.load(cu_ptr + b + 1) - q_start
    if mt * BLOCK_M >= q_len * G:
        return
    if SKIP_SINGLE and q_len == 1:  # the caller attends the one-token sequences itself (paged_prefill's skip_single)
        return
    prefix = tl.load(lens_ptr + b) - q_len
    r = mt * BLOCK_M + tl.arange(0, BLOCK_M)  # packed rows: query i = r // G of head kvh * G + r % G
    i = r // G
    h = kvh * G + r % G
    d = tl.arange(0, BLOCK_D)
    i_mask = i < q_len
    d_mask = d < D
    rows = (q_start + i).to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * stride_qt + h[:, None] * stride_qh + d[None, :],
                mask=i_mask[:, None] & d_mask[None, :], other=0.0)
    q = q.to(tl.float32) * sm_scale_log2
    if BITS:
        q = q * Q_LIFT_F  # lowered e4m3 tiles (fp8_bits): exact, a power of two before the bf16 rounding
    if DOT_F32:
        q = q.to(tl.float32)
    elif QUANT:
        q = q.to(tl.bfloat16)
    else:
        q = q.to(kc_ptr.dtype.element_ty)
    pos = prefix + i  # absolute positions of the queries

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bt_row = bt_ptr + b.to(tl.int64) * stride_bt
    lo = ((prefix + (mt * BLOCK_M) // G) // BLOCK_N) * BLOCK_N  # keys below lo: visible to every query of the tile
    hi = prefix + tl.minimum(q_len, ((mt + 1) * BLOCK_M - 1) // G + 1)  # keys at or above hi: visible to none
    ks = tl.zeros([BLOCK_N], tl.float32)  # the tile scales carried through both loops (unused unless QUANT)
    vs = ks
    if QUANT:  # the first tile's; each _tile loads the next one's (the second loop starts where the first ends)
        ks, vs = tile_scales(bt_row, ks_ptr, vs_ptr, 0, hi, kvh, BS, HKV, BLOCK_N, BITS)
    for n0 in range(0, lo, BLOCK_N):
        acc, m_i, l_i, ks, vs = _tile(acc, m_i, l_i, ks, vs, q, kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_row, n0, hi, pos,
                                      kvh, d, d_mask, BS, HKV, D, BLOCK_N, QUANT, False, PREC, BITS)
    for n0 in range(lo, hi, BLOCK_N):
        acc, m_i, l_i, ks, vs = _tile(acc, m_i, l_i, ks, vs, q, kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_row, n0, hi, pos,
                                      kvh, d, d_mask, BS, HKV, D, BLOCK_N, QUANT, True, PREC, BITS)
    if BITS:
        acc = acc * UNLIFT_F
    out = acc / l_i[:, None]
    tl.store(o_ptr + rows[:, None] * stride_ot + h[:, None] * stride_oh + d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=i_mask[:, None] & d_mask[None, :])


def slot_mapping_for(block_tables: torch.Tensor, seq_lens: torch.Tensor, q_lens: torch.Tensor,
                     block_size: int) -> torch.Tensor:
    """Slots of the newest q_lens[b] positions of every sequence, packed: [sum(q_lens)] int64."""
    starts = (seq_lens - q_lens).long()
    seq = torch.repeat_interleave(torch.arange(len(q_lens), device=q_lens.device), q_lens.long())  # [T]
    first = torch.cumsum(q_lens.long(), 0) - q_lens.long()
    pos = starts[seq] + torch.arange(len(seq), device=q_lens.device) - first[seq]  # [T] absolute positions
    return block_tables[seq, pos // block_size].long() * block_size + pos % block_size


def _check_prefill(q, k, v, cu_seqlens_q, seq_lens, block_tables, k_cache, v_cache, k_scale, v_scale, where,
                   max_q_len: int | None = None):
    check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale, where)
    if q.dim() != 3 or k.dim() != 3 or k.shape[0] != q.shape[0] or k.shape != v.shape:
        raise ValueError(f"{where}: q must be [T, Hq, D] and k, v [T, Hkv, D] (packed tokens), got "
                         f"q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
    if cu_seqlens_q.dtype != torch.int32 or cu_seqlens_q.shape != (seq_lens.shape[0] + 1,):
        raise ValueError(f"{where}: cu_seqlens_q must be int32 [B+1={seq_lens.shape[0] + 1}], got "
                         f"{cu_seqlens_q.dtype} {tuple(cu_seqlens_q.shape)}")
    if values_checkable(cu_seqlens_q, seq_lens):  # reads the offsets: CPU only, no device sync on CUDA
        check_cu_seqlens(where, cu_seqlens_q, seq_lens, q.shape[0], max_q_len)


def check_cu_seqlens(where: str, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, num_tokens: int,
                     max_q_len: int | None = None) -> None:
    """cu_seqlens_q starts at 0, never decreases, ends at most at the packed token count (rows past its end are
    padding: their K/V are written to their slots, their output rows are left unwritten; phase 4's full mixed-step
    graphs pad to a bucket), and no sequence has more new tokens than its length: otherwise the kernel read q rows
    of the wrong sequence, or past q (silently). A given
    max_q_len sizes the grid, so one below the longest sequence's new tokens left rows unwritten (torch.empty's
    leftovers)."""
    cu = cu_seqlens_q.long()
    q_lens = cu[1:] - cu[:-1]
    if int(cu[0]) != 0 or int(cu[-1]) > num_tokens or bool((q_lens < 0).any()):
        raise ValueError(f"{where}: cu_seqlens_q must rise from 0 to at most the number of packed tokens "
                         f"({num_tokens}), got {cu.tolist()[:8]}{'...' if len(cu) > 8 else ''}: entry b+1 - entry b is "
                         "sequence b's new tokens")
    over = q_lens > seq_lens.long()
    if bool(over.any()):
        b = int(over.nonzero()[0])
        raise ValueError(f"{where}: sequence {b} has {int(q_lens[b])} new tokens but seq_lens[{b}] = "
                         f"{int(seq_lens[b])}; seq_lens counts the cached tokens including the new ones")
    if max_q_len is not None and q_lens.numel() and max_q_len < int(q_lens.max()):
        raise ValueError(f"{where}: max_q_len={max_q_len} is below the longest sequence's {int(q_lens.max())} new "
                         "tokens; pass at least that, or None to compute it")


# KV tile by cache format. FP8: 128-token tiles, measured on the H100 where phase 4's serving steps run this kernel
# (phase4_scheduler/sweep_small_steps.py, results/small_steps_sweep_prefill_s1207c_h100.json; hundreds of decodes
# packed beside a prompt or two): 15.0 / 26.2 / 68.1 us a layer against 17.6 / 31.6 / 81.6 with 64-token tiles at
# 35 / 100 / 300 decodes of 260 tokens -- each converted tile feeds twice the tensor work. bf16: 64 (the same sweep:
# 128 is no faster there).
DEFAULT_BLOCK_N = {False: 64, True: 128}


def paged_prefill(q, k, v, cu_seqlens_q, seq_lens, block_tables, k_cache, v_cache, slot_mapping, k_scale=None,
                  v_scale=None, sm_scale=None, max_q_len: int | None = None, block_m: int = 64,
                  block_n: int | None = None, num_warps: int = 4, num_stages: int = 2,
                  skip_single: bool = False) -> torch.Tensor:
    """Write k, v into the cache at slot_mapping, then causal attention of q over the cache. -> [T, Hq, D].
    skip_single: write every row's K/V but leave the rows of one-token sequences unwritten in the output (a caller
    that attends those through the decode kernel: phase 4's split mixed steps). block_n: 64 over a bf16 / fp32
    cache, 128 over FP8 (DEFAULT_BLOCK_N)."""
    _check_prefill(q, k, v, cu_seqlens_q, seq_lens, block_tables, k_cache, v_cache, k_scale, v_scale,
                   "paged_prefill", max_q_len)
    block_n = block_n if block_n is not None else DEFAULT_BLOCK_N[k_cache.dtype == FP8]
    require_power_of_two("paged_prefill", "block_m", block_m)
    require_power_of_two("paged_prefill", "block_n", block_n)
    if sm_scale is not None:
        require_float("paged_prefill", "sm_scale", sm_scale)
    write_kv_cache(k, v, slot_mapping, k_cache, v_cache, k_scale, v_scale)
    t, hq, d = q.shape
    b = seq_lens.shape[0]
    hkv = k_cache.shape[2]
    out = torch.empty_like(q)
    if t == 0:
        return out
    quant = k_cache.dtype == FP8
    sm_scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    g = hq // hkv
    if block_m % g == 0:  # flat: sum over sequences of ceil(q_len / BQ) <= T // BQ + B tiles (NOTE on the grid)
        grid, flat = (t // (block_m // g) + b, hkv, 1), True
    else:
        if max_q_len is None:
            max_q_len = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max()) if b else 0
        grid, flat = (triton.cdiv(max_q_len * g, block_m), hkv, b), False
    paged_prefill_kernel[grid](
        q, k_cache, v_cache, k_scale if quant else k_cache, v_scale if quant else v_cache, block_tables,
        cu_seqlens_q, seq_lens, out, q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        sm_scale * LOG2E, b, BS=k_cache.shape[1], HKV=hkv, G=g, D=d, BLOCK_D=max(16, triton.next_power_of_2(d)),
        BLOCK_M=block_m, BLOCK_N=block_n, QUANT=quant, DOT_F32=interpreting() or q.dtype == torch.float32,
        PREC="ieee" if q.dtype == torch.float32 else "tf32", SKIP_SINGLE=skip_single, FLAT=flat,
        BITS=quant and use_bits(block_n, d, num_warps, q.dtype), num_warps=num_warps, num_stages=num_stages)
    return out


def paged_prefill_ref(q, k, v, cu_seqlens_q, seq_lens, block_tables, k_cache, v_cache, slot_mapping, k_scale=None,
                      v_scale=None, sm_scale=None) -> torch.Tensor:
    """Write with the reference writer, then per sequence: gather its pages, causal attention_ref (fp32)."""
    _check_prefill(q, k, v, cu_seqlens_q, seq_lens, block_tables, k_cache, v_cache, k_scale, v_scale,
                   "paged_prefill_ref")
    write_kv_cache_ref(k, v, slot_mapping, k_cache, v_cache, k_scale, v_scale)
    out = torch.empty_like(q)
    cu = cu_seqlens_q.tolist()
    for b, n in enumerate(seq_lens.tolist()):
        qb = q[cu[b]:cu[b + 1]].transpose(0, 1)[None].float()  # [1, Hq, q_len, D]
        if qb.shape[2] == 0:
            continue
        kb = gather_kv(k_cache, k_scale, block_tables[b:b + 1], n, torch.float32)  # [1, Hkv, n, D]
        vb = gather_kv(v_cache, v_scale, block_tables[b:b + 1], n, torch.float32)
        o = attention_ref(qb, kb, vb, q_offset=n - qb.shape[2], scale=sm_scale)
        out[cu[b]:cu[b + 1]] = o[0].transpose(0, 1).to(q.dtype)
    return out
