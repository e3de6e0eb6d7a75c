"""Paged decode attention: one new query token per sequence against its whole paged KV history.

    q:             [B, Hq, D]                      the new token's queries
    k/v_cache:     [num_blocks, block_size, Hkv, D] the shared block pool (see cache_write.py)
    block_tables:  [B, max_blocks] int32           logical block -> physical block, per sequence
    seq_lens:      [B] int32                       tokens cached per sequence (the new one included)

NOTE (the two design decisions):
- GQA-aware grid. One program owns one (sequence, KV head, split) and computes all G = Hq / Hkv query heads that
  share that KV head: the G queries form the M side of a [G, D] x [D, BLOCK_N] tl.dot, so each KV block is read
  from HBM once per group instead of G times. At 32q/4kv that is 8x less traffic than a per-query-head grid.
- Split-KV (flash-decoding). At B=32 x 4 KV heads there are only 128 (sequence, head) pairs for 132 SMs, each
  walking 8K tokens alone. Cutting every sequence into NUM_SPLITS ranges gives B * Hkv * NUM_SPLITS programs; each
  writes an un-normalised partial (output, log-sum-exp) and a small reduction kernel merges them exactly.
Every physical offset is computed in int64: block_id * block_size * Hkv * D passes 2^31 in a large pool.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from common.attention import repeat_kv
from common.paged_checks import check_block_ids, require_float, require_power_of_two, require_tensors, values_checkable
from common.pdl import pdl_args, pdl_wait
from phase3_paged_fp8.cache_write import FP8, check_scales, fp8_to_float
from phase3_paged_fp8.fp8_bits import Q_LIFT_F, UNLIFT_F, bits_enabled, e4m3_to_bf16_lowered

LOG2E = 1.4426950408889634


def interpreting() -> bool:
    """True under the Triton CPU interpreter, where bf16 tl.dot is unreliable: the kernels then multiply in fp32."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def token_scales(ks_ptr, vs_ptr, slot, kvh, n_mask, HKV: tl.constexpr, BITS: tl.constexpr):
    """The K and V scales (fp32, 0 where masked) of the tokens at `slot` [N] of one KV head. With BITS (lowered e4m3
    tiles, fp8_bits) the K scale carries 2^UNLIFT back into the scores and the V scale lifts p by 2^Q_LIFT."""
    ks = tl.load(ks_ptr + slot * HKV + kvh, mask=n_mask, other=0.0).to(tl.float32)
    vs = tl.load(vs_ptr + slot * HKV + kvh, mask=n_mask, other=0.0).to(tl.float32)
    if BITS:
        ks = ks * UNLIFT_F
        vs = vs * Q_LIFT_F
    return ks, vs


@triton.jit
def tile_scales(bt_row, ks_ptr, vs_ptr, n0, end, kvh, BS: tl.constexpr, HKV: tl.constexpr, BLOCK_N: tl.constexpr,
                 BITS: tl.constexpr):
    """token_scales of tokens n0 .. n0 + BLOCK_N (0 past `end`), their slots read from the block-table row.

    NOTE (SCALES, measured): Triton's pipeliner streams the K/V tiles through cp.async but not these [BLOCK_N] fp16
    vectors (2 bytes a thread, below cp.async's 4), so loaded where they are used each tile waited a full memory
    latency: in ncu's samples of the FP8 kernel (H100, B=1,024 / 192, decode_ncu_fp8_s1206_h100) ~20% of the warps
    stood at the shared-memory stores of the scales, waiting for their loads. So the loop loads the NEXT tile's
    scales (and their block-table entries: L1 hits, the K/V addresses read them too) one tile ahead."""
    n = n0 + tl.arange(0, BLOCK_N)
    n_mask = n < end
    slot = tl.load(bt_row + n // BS, mask=n_mask, other=0).to(tl.int64) * BS + n % BS
    return token_scales(ks_ptr, vs_ptr, slot, kvh, n_mask, HKV, BITS)


@triton.jit
def paged_decode_kernel(q_ptr, kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_ptr, lens_ptr, o_ptr, po_ptr, lse_ptr,
                        stride_qb, stride_qh, stride_bt, stride_ob, stride_oh, sm_scale_log2, num_splits, min_tps,
                        BS: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr,
                        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
                        QUANT: tl.constexpr, DOT_F32: tl.constexpr,
                        PREC: tl.constexpr, PDL: tl.constexpr, BITS: tl.constexpr = False):
    """BITS (with QUANT): e4m3 tiles become bf16 by moving bits (fp8_bits: values lowered by 2^-120; q and p lifted
    by 2^64, scores and outputs multiplied back by 2^56) instead of Triton's conversions."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    pdl_wait(PDL)
    seq_len = tl.load(lens_ptr + b)
    # the splits share THIS sequence's length (not the table's width) in whole tiles, at least min_tps tokens each:
    # a short sequence in a wide, graph-captured table spreads over its splits when the batch is small (the GPU is
    # idle otherwise) and keeps to one or a few splits when the batch alone fills the GPU (see default_min_tps)
    tps = tl.maximum(tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N, min_tps)
    start = split * tps
    end = tl.minimum(start + tps, seq_len)

    g = tl.arange(0, G_PAD)
    d = tl.arange(0, BLOCK_D)
    g_mask = g < G
    d_mask = d < D
    heads = kvh * G + g  # the query heads of this KV head
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)  # [G_PAD, BLOCK_D]
    q = (q.to(tl.float32) * sm_scale_log2)  # fold softmax scale and log2(e) into q: scores are in log2 units
    if BITS:
        q = q * Q_LIFT_F  # lowered e4m3 tiles (fp8_bits): exact, a power of two before the bf16 rounding
    if DOT_F32:
        q = q.to(tl.float32)
    elif QUANT:
        q = q.to(tl.bfloat16)  # e4m3 -> bf16 is exact, so FP8 tiles multiply on the bf16 tensor cores
    else:
        q = q.to(kc_ptr.dtype.element_ty)

    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, BLOCK_D], tl.float32)
    bt_row = bt_ptr + b.to(tl.int64) * stride_bt
    if QUANT:  # the first tile's scales; the loop loads each next tile's a tile ahead (SCALES NOTE)
        ks_next, vs_next = tile_scales(bt_row, ks_ptr, vs_ptr, start, end, kvh, BS, HKV, BLOCK_N, BITS)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < end
        blk = tl.load(bt_row + n // BS, mask=n_mask, other=0).to(tl.int64)
        slot = blk * BS + n % BS  # [BLOCK_N] int64
        kv_off = slot[:, None] * (HKV * D) + kvh * D + d[None, :]
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(kc_ptr + kv_off, mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        if QUANT:
            ks_t, vs_t = ks_next, vs_next
            ks_next, vs_next = tile_scales(bt_row, ks_ptr, vs_ptr, n0 + BLOCK_N, end, kvh, BS, HKV, BLOCK_N,
                                            BITS)
        if BITS:
            k = e4m3_to_bf16_lowered(k)
        else:
            k = k.to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=PREC)  # [G_PAD, BLOCK_N]
        if QUANT:
            s = s * ks_t[None, :]
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if QUANT:
            p = p * vs_t[None, :]
        v = tl.load(vc_ptr + kv_off, mask=kv_mask, other=0.0)
        if BITS:
            v = e4m3_to_bf16_lowered(v)
        else:
            v = v.to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new

    out_mask = g_mask[:, None] & d_mask[None, :]
    if BITS:
        acc = acc * UNLIFT_F
    if not SPLIT:
        out = acc / l_i[:, None]
        tl.store(o_ptr + b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=out_mask)
    else:
        # partials: po [B, Hq, num_splits, D] fp32, lse [B, Hq, num_splits] (log2 units; -inf for an empty split)
        row = (b.to(tl.int64) * (HKV * G) + heads) * num_splits + split  # [G_PAD]
        safe_l = tl.where(l_i > 0, l_i, 1.0)
        tl.store(po_ptr + row[:, None] * D + d[None, :], acc / safe_l[:, None], mask=out_mask)
        tl.store(lse_ptr + row, tl.where(l_i > 0, m_i + tl.log2(safe_l), float("-inf")), mask=g_mask)


@triton.jit
def paged_decode_reduce_kernel(po_ptr, lse_ptr, o_ptr, stride_ob, stride_oh, HQ: tl.constexpr,
                               NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr, D: tl.constexpr,
                               BLOCK_D: tl.constexpr, PDL: tl.constexpr):
    """Merge NUM_SPLITS partial softmaxes of one (sequence, query head): o = sum_s 2^(lse_s - lse) * o_s."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    pdl_wait(PDL)
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, BLOCK_D)
    row = (b.to(tl.int64) * HQ + h) * NUM_SPLITS
    lse = tl.load(lse_ptr + row + s, mask=s < NUM_SPLITS, other=float("-inf"))  # [SPLITS_PAD]
    m = tl.max(lse, axis=0)
    w = tl.exp2(lse - m)
    w = w / tl.sum(w, axis=0)
    po = tl.load(po_ptr + (row + s)[:, None] * D + d[None, :], mask=(s[:, None] < NUM_SPLITS) & (d[None, :] < D),
                 other=0.0)  # [SPLITS_PAD, BLOCK_D]
    out = tl.sum(po * w[:, None], axis=0)
    tl.store(o_ptr + b.to(tl.int64) * stride_ob + h * stride_oh + d, out.to(o_ptr.dtype.element_ty), mask=d < D)


def check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale, where: str) -> None:
    """Shared argument checks of the paged kernels (clear messages for the mistakes people make)."""
    require_tensors(where, q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables, seq_lens=seq_lens)
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"{where}: caches must both be [num_blocks, block_size, Hkv, D], got {tuple(k_cache.shape)} "
                         f"and {tuple(v_cache.shape)}")
    hkv, d = k_cache.shape[2], k_cache.shape[3]
    if q.shape[-1] != d or q.shape[-2] % hkv:
        raise ValueError(f"{where}: q has {q.shape[-2]} heads of dim {q.shape[-1]}; the cache has {hkv} KV heads of "
                         f"dim {d} (query heads must be a multiple of KV heads)")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"{where}: q must be fp16/bf16/fp32, got {q.dtype}")
    if block_tables.dim() != 2 or block_tables.dtype != torch.int32:
        raise ValueError(f"{where}: block_tables must be int32 [B, max_blocks], got {block_tables.dtype} "
                         f"{tuple(block_tables.shape)}")
    if seq_lens.dim() != 1 or seq_lens.dtype != torch.int32 or seq_lens.shape[0] != block_tables.shape[0]:
        raise ValueError(f"{where}: seq_lens must be int32 [B={block_tables.shape[0]}], got {seq_lens.dtype} "
                         f"{tuple(seq_lens.shape)}")
    check_scales(k_cache, v_cache, k_scale, v_scale, where)
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError(f"{where}: caches must be contiguous")
    if q.stride(-1) != 1:
        raise ValueError(f"{where}: q must have unit stride in its last dimension")
    if (block_tables.shape[1] > 1 and block_tables.stride(1) != 1) or (seq_lens.shape[0] > 1
                                                                       and seq_lens.stride(0) != 1):
        raise ValueError(f"{where}: block_tables' rows and seq_lens must be contiguous (the kernels read them with "
                         "unit stride); pass .contiguous()")
    devs = {t.device for t in (q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale) if t is not None}
    if len(devs) != 1:
        raise ValueError(f"{where}: all tensors must be on one device, got {devs}")
    if values_checkable(block_tables, seq_lens):  # reads the ids: CPU only, no device sync on CUDA
        check_block_ids(where, block_tables, seq_lens, k_cache.shape[1], k_cache.shape[0])


def check_launch_knobs(where: str, sm_scale, num_splits, block_n) -> None:
    """A tensor sm_scale reached the kernel as a pointer, block_n=12 failed inside tl.arange, and num_splits=0 or -1
    launched no program at all: the output was torch.empty's leftover memory."""
    if sm_scale is not None:
        require_float(where, "sm_scale", sm_scale)
    require_power_of_two(where, "block_n", block_n)
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"{where}: num_splits must be a positive int (or None for the default), got {num_splits!r}")


def default_num_splits(batch: int, num_kv_heads: int, max_len: int, num_sms: int = 132, block_n: int = 64) -> int:
    """The grid's split count: about 8 programs per SM, rounded down to a power of two, at most one tile of the
    table's width each, at most 32 (or one per 1,024 tokens of a longer table, up to 128). Which splits a sequence
    actually uses is decided in the kernel from its own length (default_min_tps), so a graph captured for a wide
    table still fits short sequences."""
    want = max(1, math.ceil(8 * num_sms / (batch * num_kv_heads)))
    want = 1 << (want.bit_length() - 1)
    return max(1, min(want, max_len // block_n, max(32, max_len // 1024), 128))


def default_min_tps(batch: int, num_kv_heads: int, num_sms: int = 132, block_n: int = 64) -> int:
    """Fewest tokens a split takes: one tile while the (sequence, KV head) pairs leave most SMs idle, more as they
    fill them (8 * pairs / SMs tiles). Measured (H100 and H200): B=1 is fastest with one-tile splits (ctx 256 -> 8
    splits), B=32/8K with 8 splits of 32 tiles, B=64/2K with 4 splits, B=64/512 with one split."""
    return block_n * max(1, 8 * batch * num_kv_heads // num_sms)


def default_tile(batch: int, num_kv_heads: int, fp8: bool) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages) by regime, from phase4_scheduler/sweep_decode.py (H200, 32q/4kv d64) and
    phase 3's sweep (H100, B=32/8K): a wide batch of short sequences (>= 512 pairs) wants 64-token tiles on 2 warps
    with 3 stages (bf16 and FP8: 8% / 25% faster than the old default at B=1024, ctx 192); a medium batch 64-token
    tiles on 4 warps; B <= 16 keeps phase 3's 32 (bf16) / 128 (FP8) on 4 warps, 2 stages."""
    pairs = batch * num_kv_heads
    if pairs >= 512:
        return 64, 2, 3
    if fp8:
        return 128, 4, 2
    return (64, 4, 2) if pairs >= 64 else (32, 4, 2)


def decode_plan(device, batch: int, num_kv_heads: int, max_len: int, fp8: bool = False, num_splits=None,
                block_n=None, num_warps=None, num_stages=None, min_tokens_per_split=None) -> tuple[int, int, int, int, int]:
    """(block_n, num_warps, num_stages, num_splits, min_tokens_per_split) of a decode launch: what the caller set,
    the defaults (default_tile, default_num_splits, default_min_tps) for the rest. Phase 4's fused decode attention
    plans its launches with this too (through the seam: "attention.paged_decode_plan")."""
    tile = default_tile(batch, num_kv_heads, fp8)
    block_n, num_warps, num_stages = block_n or tile[0], num_warps or tile[1], num_stages or tile[2]
    if num_splits is None:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
        min_tokens_per_split = min_tokens_per_split or default_min_tps(batch, num_kv_heads, sms, block_n)
        # no more splits than the table holds min_tps-long pieces: an always-empty split still costs its partial
        # writes and the reduce kernel (H200: B=256/512 tokens 50 us with 2 splits of which one empty, 38 with 1)
        num_splits = min(default_num_splits(batch, num_kv_heads, max_len, sms, block_n),
                         max(1, max_len // min_tokens_per_split))
    return block_n, num_warps, num_stages, num_splits, min_tokens_per_split or block_n


def use_bits(block_n: int, d: int, num_warps: int, q_dtype) -> bool:
    """Whether an FP8 launch converts by moving bits (fp8_bits): not under the interpreter or TITAN_FP8_CVT=cvt, not
    for fp32 queries (their kernel multiplies in fp32), and only where every thread holds a multiple of four values
    of a K tile (the inline assembly converts four bytes at a time)."""
    per_thread = block_n * max(16, triton.next_power_of_2(d)) // (32 * num_warps)
    return bits_enabled(interpreting()) and q_dtype != torch.float32 and per_thread % 4 == 0


def paged_decode(q, k_cache, v_cache, block_tables, seq_lens, k_scale=None, v_scale=None, sm_scale=None,
                 num_splits: int | None = None, max_seq_len: int | None = None, block_n: int | None = None,
                 num_warps: int | None = None, num_stages: int | None = None,
                 min_tokens_per_split: int | None = None) -> torch.Tensor:
    """Decode attention over a paged cache. q [B, Hq, D] -> out [B, Hq, D] (q's dtype).

    Unset tile / warps / stages / splits come from default_tile, default_num_splits and default_min_tps. An explicit
    num_splits without min_tokens_per_split splits every sequence evenly (one tile at least per split).
    """
    check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale, "paged_decode")
    if q.dim() != 3 or q.shape[0] != block_tables.shape[0]:
        raise ValueError(f"paged_decode: q must be [B={block_tables.shape[0]}, Hq, D], got {tuple(q.shape)}")
    check_launch_knobs("paged_decode", sm_scale, num_splits, block_n)
    b, hq, d = q.shape
    if b == 0:
        return torch.empty_like(q)
    bs, hkv = k_cache.shape[1], k_cache.shape[2]
    g = hq // hkv
    sm_scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    max_len = max_seq_len if max_seq_len is not None else int(block_tables.shape[1] * bs)
    block_n, num_warps, num_stages, num_splits, min_tokens_per_split = decode_plan(
        q.device, b, hkv, max_len, k_cache.dtype == FP8, num_splits, block_n, num_warps, num_stages,
        min_tokens_per_split)
    out = torch.empty_like(q)
    quant = k_cache.dtype == FP8
    pdl, launch = pdl_args(q)
    if num_splits > 1:
        po = torch.empty(b, hq, num_splits, d, dtype=torch.float32, device=q.device)
        lse = torch.empty(b, hq, num_splits, dtype=torch.float32, device=q.device)
    else:
        po = lse = out  # unused
    paged_decode_kernel[(b, hkv, num_splits)](
        q, k_cache, v_cache, k_scale if quant else k_cache, v_scale if quant else v_cache, block_tables, seq_lens,
        out, po, lse, q.stride(0), q.stride(1), block_tables.stride(0), out.stride(0), out.stride(1),
        sm_scale * LOG2E, num_splits, min_tokens_per_split, BS=bs, HKV=hkv, G=g,
        G_PAD=max(16, triton.next_power_of_2(g)), D=d, BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_N=block_n,
        SPLIT=num_splits > 1, QUANT=quant,
        DOT_F32=interpreting() or q.dtype == torch.float32,
        PREC="ieee" if q.dtype == torch.float32 else "tf32", PDL=pdl, num_warps=num_warps, num_stages=num_stages,
        BITS=quant and use_bits(block_n, d, num_warps, q.dtype), **launch)
    if num_splits > 1:
        paged_decode_reduce_kernel[(b, hq)](po, lse, out, out.stride(0), out.stride(1), HQ=hq, NUM_SPLITS=num_splits,
                                            SPLITS_PAD=triton.next_power_of_2(num_splits), D=d,
                                            BLOCK_D=triton.next_power_of_2(d), PDL=pdl, num_warps=4, **launch)
    return out


def gather_kv(cache, scale, block_tables, length: int, dtype) -> torch.Tensor:
    """Pages -> contiguous: [num_blocks, bs, Hkv, D] x [B, max_blocks] -> [B, Hkv, length, D] (dequantised)."""
    bs = cache.shape[1]
    nblk = triton.cdiv(length, bs)
    idx = block_tables[:, :nblk].long()
    x = cache.view(torch.uint8)[idx].view(FP8) if cache.dtype == FP8 else cache[idx]  # fp8 gathered as raw bytes
    x = x.flatten(1, 2)[:, :length]  # [B, length, Hkv, D]
    if scale is None:
        x = x.to(dtype)
    else:
        x = (fp8_to_float(x) * scale[idx].flatten(1, 2)[:, :length, :, None].float()).to(dtype)
    return x.transpose(1, 2)


def paged_decode_ref(q, k_cache, v_cache, block_tables, seq_lens, k_scale=None, v_scale=None, sm_scale=None,
                     compute_dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """Gather every sequence's pages into a contiguous [B, Hkv, L, D] tensor, mask the tail, run SDPA.

    With compute_dtype=None it computes in q's dtype: that is the 'gather + SDPA' PyTorch baseline of the benchmark.
    """
    check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale, "paged_decode_ref")
    dt = compute_dtype or q.dtype
    length = int(seq_lens.max())
    k = gather_kv(k_cache, k_scale, block_tables, length, dt)
    v = gather_kv(v_cache, v_scale, block_tables, length, dt)
    mask = torch.arange(length, device=q.device)[None, :] < seq_lens[:, None]  # [B, L]
    n_rep = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(q[:, :, None].to(dt), repeat_kv(k, n_rep), repeat_kv(v, n_rep),
                                         attn_mask=mask[:, None, None, :], scale=sm_scale)
    return out[:, :, 0].to(q.dtype)
