"""The engine's decode attention in ONE kernel: RoPE on the new q and k, the new K/V written into the paged cache,
split-KV attention over the history, and the merge of the splits.

    out = decode_attention(q, k, v, slot_mapping, k_cache, v_cache, block_tables, seq_lens,
                           positions=pos, cos_sin_cache=cs, counters=ws)   # q [B, Hq, D], k/v [B, Hkv, D]

is, in one launch, what the unfused decode step does in four (rope_qk, write_kv_cache, paged_decode, its reduce):

    q, k = rope(q, k, positions)                      # skipped when positions is None (q and k already rotated)
    k_cache[slot], v_cache[slot] = k, v               # slot = slot_mapping[b]: position seq_lens[b] - 1
    out = paged_decode(q, k_cache, v_cache, block_tables, seq_lens)

NOTE (why, and the three tricks). At B=1 a TinyLlama decode step is ~190 kernels; each boundary costs ~2 us even
under CUDA graphs and PDL (common/pdl.py), and attention was four of the eight kernels of a layer.
- The new token never goes through the cache. Positions < seq_len - 1 are read from the cache; the split that owns
  position seq_len - 1 scores the new k (and adds the new v) straight from registers and writes them into the cache
  for later steps. So reading the cache does not depend on anything this layer computes...
- ...and the history is loaded BEFORE the PDL wait: the block table and the first K/V tile of every split stream in
  while the qkv projection is still finishing (the cache of earlier steps never changes under a running step), at
  small batches (prefetch_first_tile). Only q, k, v (the previous kernel's output) are read after the wait; every
  write comes after it.
- No reduce kernel: each split writes its partial (output, log-sum-exp), then bumps a per-(sequence, KV head)
  counter (`atomic_add`, acq_rel, GPU scope, after a CTA barrier: every thread's partial stores are ordered before
  it). The program that sees count == splits - 1 is the last one; it merges every partial (L2 reads, `.cg`: past
  the non-coherent L1) and resets the counter to 0, so a persistent zeroed `counters` buffer stays zeroed and a CUDA
  graph can replay the kernel forever. `counters` must not be shared by two streams at once.
Numerics: identical to the unfused path's roundings (RoPE in fp32 on dtype-rounded cos/sin, rounded to the dtype;
the cache holds the dtype-rounded k, v) except that the new token's score is an fp32 dot product rather than a
tensor-core one.
FP8 caches (phase 3's e4m3 + one fp16 scale per token and KV head; QUANT): the new token is quantised in registers
exactly as write_kv_cache does (scale amax / 448 rounded to fp16 first, values rounded to nearest even), stored with
its scales, and scored / added as the cache now holds it (e4m3 x scale), so it goes through the same quantisation
as every other position; history tiles are converted by Triton (not phase 3's bit moves: this kernel serves the
small batches, where a step is latency-bound) with the scales on the score and p columns. Tested under the
interpreter (same cache bytes as rope_qk + write_kv_cache, output against the fp32 reference) and on the H100; with
fused_plan's medium-batch tiles it beat the four unfused kernels over FP8 at every measured batch (B=1-120), so the
runner folds FP8 decode steps too (TITAN_FP8_FUSED=0: the unfused kernels).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from common import artifacts
from common.pdl import pdl_args, pdl_wait
from phase4_scheduler.fused_kernels import interpreting, rope_qk_ref

LOG2E = 1.4426950408889634
FP8 = torch.float8_e4m3fn  # phase 3's FP8 cache format: e4m3 values, one fp16 scale per token and KV head
SCALE_DTYPE = torch.float16
_quantize_e4m3 = artifacts.get("kv_cache.fp8_quantize_jit")  # phase 3's quantiser and scale loads (Triton functions)
_token_scales = artifacts.get("attention.fp8_token_scales_jit")


@triton.jit
def _tile(qs, k, v, ks, vs, n_mask, m_i, l_i, acc, PREC: tl.constexpr, QUANT: tl.constexpr):
    """One online-softmax step over a [BLOCK_N] tile. An all-masked tile changes nothing. QUANT: k, v are e4m3 and
    ks, vs their per-token scales, applied as phase 3's kernels do (to the score column, to p's column)."""
    s = tl.dot(qs, tl.trans(k.to(qs.dtype)), input_precision=PREC)  # [G_PAD, BLOCK_N], log2 units
    if QUANT:
        s = s * ks[None, :]
    s = tl.where(n_mask[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no -inf - -inf
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_new = l_i * alpha + tl.sum(p, axis=1)
    if QUANT:
        p = p * vs[None, :]
    acc = acc * alpha[:, None] + tl.dot(p.to(qs.dtype), v.to(qs.dtype), input_precision=PREC)
    return m_new, l_new, acc


@triton.jit
def _kv_tile(bt_row, kc_ptr, vc_ptr, ks_ptr, vs_ptr, n, n_mask, kvh, d, BS: tl.constexpr, HKV: tl.constexpr,
             D: tl.constexpr, QUANT: tl.constexpr):
    """K and V [BLOCK_N, D] of cached positions n [BLOCK_N] of one KV head (the cache holds rotated keys), and with
    QUANT their per-token scales [BLOCK_N] (fp32, 0 where masked; ones otherwise, unused)."""
    slot = tl.load(bt_row + n // BS, mask=n_mask, other=0).to(tl.int64) * BS + n % BS
    off = (slot * (HKV * D) + kvh * D)[:, None] + d[None, :]  # int64 element offsets
    k = tl.load(kc_ptr + off, mask=n_mask[:, None], other=0.0)
    v = tl.load(vc_ptr + off, mask=n_mask[:, None], other=0.0)
    if QUANT:
        ks, vs = _token_scales(ks_ptr, vs_ptr, slot, kvh, n_mask, HKV, False)
    else:
        ks = n_mask.to(tl.float32)
        vs = ks
    return k, v, ks, vs


@triton.jit
def _cos_sin(cs_ptr, pos_ptr, b, stride_cs, d, HALF: tl.constexpr, dt):
    """cos and sin of dims d [D] at sequence b's position, rounded to the dtype; sin negated in the first half."""
    pos = tl.load(pos_ptr + b).to(tl.int64)
    c = tl.load(cs_ptr + pos * stride_cs + d % HALF).to(dt).to(tl.float32)
    s = tl.load(cs_ptr + pos * stride_cs + HALF + d % HALF).to(dt).to(tl.float32)
    return c, tl.where(d < HALF, -s, s)


@triton.jit
def _rope(x, partner, c, s, dt):
    """x * cos + rotate_half(x) * sin with rotate_half(x) = (-x2, x1): `partner` is x at (d + D/2) mod D, c / s the
    cos / sin of d mod D/2 broadcast over D, negated sin in the first half. Rounded to the dtype (rope_qk's result)."""
    return (x * c + partner * s).to(dt).to(tl.float32)


@triton.jit
def decode_attention_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, cs_ptr, slot_ptr, kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_ptr,
                            lens_ptr,
                            o_ptr, po_ptr, lse_ptr, cnt_ptr,
                            stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_cs, stride_bt,
                            stride_ot, stride_oh, sm_scale_log2, num_splits, min_tps,
                            BS: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr,
                            GR: tl.constexpr, HALF: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
                            S_PAD: tl.constexpr, S_CHUNK: tl.constexpr, ROPE: tl.constexpr,
                            PREFETCH: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
                            PDL: tl.constexpr, QUANT: tl.constexpr = False):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    D: tl.constexpr = 2 * HALF
    HQ: tl.constexpr = HKV * G
    d = tl.arange(0, D)
    # ---- before the wait: the history (written by earlier steps) and this step's tables (copied before the graph)
    seq_len = tl.load(lens_ptr + b)
    tps = tl.maximum(tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N, min_tps)  # as phase 3's kernel
    start = split * tps
    end = tl.minimum(start + tps, seq_len)
    cached_end = tl.minimum(end, seq_len - 1)  # the cache holds positions < seq_len - 1; the new one is in k, v
    bt_row = bt_ptr + b.to(tl.int64) * stride_bt
    if PREFETCH:
        n = start + tl.arange(0, BLOCK_N)
        k0, v0, ks0, vs0 = _kv_tile(bt_row, kc_ptr, vc_ptr, ks_ptr, vs_ptr, n, n < cached_end, kvh, d, BS, HKV, D,
                                    QUANT)
    pdl_wait(PDL)
    # ---- after it: this step's q, k, v
    dt = q_ptr.dtype.element_ty  # the model's dtype (the cache's, or bf16 / fp16 over an e4m3 cache)
    g = tl.arange(0, G_PAD)
    g_mask = g < G
    heads = kvh * G + g
    dp = (d + HALF) % D  # rotate_half's partner of each dim
    q_row = q_ptr + b.to(tl.int64) * stride_qt + heads[:, None] * stride_qh  # [G_PAD, 1]
    q = tl.load(q_row + d[None, :], mask=g_mask[:, None], other=0.0).to(tl.float32)  # [G_PAD, D]
    if ROPE:  # rope_qk's arithmetic: cos/sin rounded to the dtype, the rotated value rounded to it
        c, s = _cos_sin(cs_ptr, pos_ptr, b, stride_cs, d, HALF, dt)
        q = _rope(q, tl.load(q_row + dp[None, :], mask=g_mask[:, None], other=0.0).to(tl.float32), c[None, :],
                  s[None, :], dt)
    qs = q * sm_scale_log2  # the softmax scale and log2(e) folded into q: scores in log2 units
    if not DOT_F32:
        qs = qs.to(dt)
    # the new token, owned by the split whose range ends at seq_len: scored from registers and cached HERE, before
    # the loop, so neither its k nor an elementwise copy of q stays live through the loop (at the large-batch tile
    # that costs ~25 registers per thread, i.e. programs per SM: decode_resources.py); v is re-read after the loop
    k_row = k_ptr + b.to(tl.int64) * stride_kt + kvh * stride_kh
    v_row = v_ptr + b.to(tl.int64) * stride_vt + kvh * stride_vh
    kn = tl.load(k_row + d).to(tl.float32)  # [D]
    if ROPE:
        kn = _rope(kn, tl.load(k_row + dp).to(tl.float32), c, s, dt)
    owner = (end == seq_len) & (start < seq_len)
    if QUANT:  # score the key as the cache will hold it (e4m3 x scale), as the unfused path reads it back
        kq, k_sc = _quantize_e4m3(kn, 0)  # as write_kv_cache quantises (one scale for the head's D values)
        s_new = tl.sum(qs.to(tl.float32) * kq[None, :], axis=1) * k_sc.to(tl.float32)
    else:
        s_new = tl.sum(qs.to(tl.float32) * kn[None, :], axis=1)
    s_new = tl.where(owner, s_new, float("-inf"))  # [G_PAD]
    slot = tl.load(slot_ptr + b).to(tl.int64)
    if owner & (slot >= 0):  # nobody reads this slot in this launch: the history ends at seq_len - 2
        dst = slot * (HKV * D) + kvh * D
        if QUANT:
            vq, v_sc = _quantize_e4m3(tl.load(v_row + d).to(tl.float32), 0)
            tl.store(kc_ptr + dst + d, kq.to(kc_ptr.dtype.element_ty))
            tl.store(vc_ptr + dst + d, vq.to(vc_ptr.dtype.element_ty))
            tl.store(ks_ptr + slot * HKV + kvh, k_sc)
            tl.store(vs_ptr + slot * HKV + kvh, v_sc)
        else:
            tl.store(kc_ptr + dst + d, kn.to(dt))
            tl.store(vc_ptr + dst + d, tl.load(v_row + d))

    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D], tl.float32)
    first = start
    if PREFETCH:
        m_i, l_i, acc = _tile(qs, k0, v0, ks0, vs0, n < cached_end, m_i, l_i, acc, PREC, QUANT)
        first = start + BLOCK_N
    for n0 in range(first, cached_end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        k, v, ks, vs = _kv_tile(bt_row, kc_ptr, vc_ptr, ks_ptr, vs_ptr, n, n < cached_end, kvh, d, BS, HKV, D, QUANT)
        m_i, l_i, acc = _tile(qs, k, v, ks, vs, n < cached_end, m_i, l_i, acc, PREC, QUANT)

    # merge the new token's score (s_new, -inf outside the owner split) into the running softmax
    vn = tl.load(v_row + d).to(tl.float32)  # [D]
    if QUANT:  # its value as the cache holds it (requantised here: the same bits as stored above)
        vq, v_sc = _quantize_e4m3(vn, 0)
        vn = vq * v_sc.to(tl.float32)
    m_new = tl.maximum(m_i, s_new)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p_new = tl.exp2(s_new - m_safe)
    l_i = l_i * alpha + p_new
    acc = acc * alpha[:, None] + p_new[:, None] * vn[None, :]
    m_i = m_new

    safe_l = tl.where(l_i > 0, l_i, 1.0)  # 0 only in padding rows (g >= G) and empty splits
    if not SPLIT:
        o_rows = o_ptr + b.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + d[None, :]
        tl.store(o_rows, (acc / safe_l[:, None]).to(o_ptr.dtype.element_ty), mask=g_mask[:, None])
    else:
        # partials: po [B, Hq, num_splits, D] fp32, lse [B, Hq, num_splits] (log2 units; -inf: an empty split)
        row = (b.to(tl.int64) * HQ + heads) * num_splits + split  # [G_PAD]
        tl.store(po_ptr + row[:, None] * D + d[None, :], acc / safe_l[:, None], mask=g_mask[:, None])
        tl.store(lse_ptr + row, tl.where(l_i > 0, m_i + tl.log2(safe_l), float("-inf")), mask=g_mask)
        tl.debug_barrier()  # every thread's partial stores are issued before the (single-thread) release below
        cnt_at = cnt_ptr + b * HKV + kvh
        arrived = tl.atomic_add(cnt_at, 1, sem="acq_rel", scope="gpu")
        if arrived == num_splits - 1:  # the last split of this (sequence, KV head): merge them all
            gr = tl.arange(0, GR)
            gr_mask = gr < G
            base = (b.to(tl.int64) * HQ + kvh * G + gr) * num_splits  # [GR]
            sp = tl.arange(0, S_PAD)
            lse = tl.load(lse_ptr + base[:, None] + sp[None, :], mask=gr_mask[:, None] & (sp < num_splits)[None, :],
                          other=float("-inf"), cache_modifier=".cg")  # [GR, S_PAD]
            m = tl.where(gr_mask, tl.max(lse, axis=1), 0.0)  # finite: the owner split always has the new token
            den = tl.sum(tl.exp2(lse - m[:, None]), axis=1)
            den = tl.where(gr_mask, den, 1.0)
            out = tl.zeros([GR, D], tl.float32)
            for s0 in range(0, num_splits, S_CHUNK):
                sc = s0 + tl.arange(0, S_CHUNK)
                msk = gr_mask[:, None] & (sc < num_splits)[None, :]  # [GR, S_CHUNK]
                w = tl.exp2(tl.load(lse_ptr + base[:, None] + sc[None, :], mask=msk, other=float("-inf"),
                                    cache_modifier=".cg") - m[:, None]) / den[:, None]
                part = tl.load(po_ptr + (base[:, None, None] + sc[None, :, None]) * D + d[None, None, :],
                               mask=msk[:, :, None], other=0.0, cache_modifier=".cg")  # [GR, S_CHUNK, D]
                out += tl.sum(part * w[:, :, None], axis=1)
            o_rows = o_ptr + b.to(tl.int64) * stride_ot + (kvh * G + gr)[:, None] * stride_oh + d[None, :]
            tl.store(o_rows, out.to(o_ptr.dtype.element_ty), mask=gr_mask[:, None])
            tl.store(cnt_at, 0)  # ready for the next launch


# The fused kernel's own launch plan at medium batches (fused_plan): measured through this kernel on the H100
# (sweep_small_steps.py, results/small_steps_sweep_decode_s1207c_h100.json, 22 layers, TinyLlama shapes): at 32-511
# (sequence, KV head) pairs phase 3's plan (tuned on its own kernel: one split once the pairs fill the SMs) left the
# fused one 5-34% slower than its best. What wins there is about 4 programs per SM -- splits = 512 / pairs, at
# least one tile each -- over 128-token tiles for bf16 and 64-token tiles for FP8 (whose 128-token tiles lose once
# split: the converted tile is held longer), 4 warps, 2 stages; confirmed in a later call through the engine's own
# entry point (results/decode_attention_plan_s1207d_h100.json). sm_90a: 111-112 registers (bf16, 128-token tiles)
# and 128 (FP8, 64-token tiles), no spills, with or without splits.
FUSED_PLAN_PAIRS = (32, 512)  # below: phase 3's plan (B=1 / 256 tokens already at its best there); above: unused
FUSED_PLAN_PROGRAMS = 512
FUSED_PLAN_TILE = {False: (128, 4, 2, 4), True: (64, 4, 2, 8)}  # fp8 -> (block_n, warps, stages, most splits)


def fused_plan(device, batch: int, num_kv_heads: int, max_len: int, fp8: bool, num_splits=None, block_n=None,
               num_warps=None, num_stages=None, min_tokens_per_split=None) -> tuple[int, int, int, int, int]:
    """(block_n, num_warps, num_stages, num_splits, min_tokens_per_split) of a fused launch: with no knob set and
    32-511 pairs, the measured medium-batch plan above (splits of >= 1 tile, the kernel dividing each sequence's own
    length among them); otherwise phase 3's decode_plan (its bf16 tiles: the fused kernel's FP8 path was measured
    against those at B=1). H100 per layer, old plan -> this one: bf16 B=8/260 tokens 6.3 -> 5.1 us, B=32/260 10.2 ->
    7.5, B=120/260 16.7 -> 15.1, B=32/1024 19.8 -> 14.8; FP8 B=32/260 13.8 -> 10.2, B=64/260 15.4 -> 12.9, B=32/1024
    25.3 -> 17.3."""
    pairs = batch * num_kv_heads
    knobs = (num_splits, block_n, num_warps, num_stages, min_tokens_per_split)
    if all(k is None for k in knobs) and FUSED_PLAN_PAIRS[0] <= pairs < FUSED_PLAN_PAIRS[1]:
        bn, warps, stages, most = FUSED_PLAN_TILE[bool(fp8)]
        want = max(1, FUSED_PLAN_PROGRAMS // pairs)
        splits = min(most, 1 << (want.bit_length() - 1), max(1, max_len // bn))
        return bn, warps, stages, splits, bn
    return artifacts.get("attention.paged_decode_plan")(device, batch, num_kv_heads, max_len, False, *knobs)


def prefetch_first_tile(batch: int, num_kv_heads: int) -> bool:
    """Load each split's first K/V tile before the PDL wait? Only while the (sequence, KV head) pairs leave SMs
    idle: measured on the H200 (results/decode_attention_h200.json, 22 layers, TinyLlama shapes), the prefetching
    kernel beats the unfused sequence 1.32x at B=1 / 256 tokens and 1.29x at B=64 / 512, but is 8-12% slower at
    B=256-1024 (the tile held in registers across the wait, outside the software pipeline)."""
    return batch * num_kv_heads < 512


def _check(q, k, v, slot_mapping, k_cache, v_cache, block_tables, seq_lens, positions, cos_sin_cache, counters,
           k_scale=None, v_scale=None):
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape or q.shape[0] != k.shape[0]:
        raise ValueError(f"decode_attention: want q [B, Hq, D], k and v [B, Hkv, D], got q{tuple(q.shape)} "
                         f"k{tuple(k.shape)} v{tuple(v.shape)}")
    b, hq, d = q.shape
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or tuple(k_cache.shape[2:]) != tuple(k.shape[1:]):
        raise ValueError(f"decode_attention: caches must both be [num_blocks, block_size, Hkv, D] with "
                         f"[Hkv, D] = {tuple(k.shape[1:])}, got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if k.shape[2] != d or hq % k.shape[1]:
        raise ValueError(f"decode_attention: q has {hq} heads of dim {d}, k {k.shape[1]} of dim {k.shape[2]}: "
                         "query heads must be a multiple of KV heads, of one dim")
    if d & (d - 1) or d < 32:
        raise ValueError(f"decode_attention: head_dim must be a power of two >= 32, got {d}")
    fp8 = k_cache.dtype == FP8 and v_cache.dtype == FP8
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or not (
            fp8 or k_cache.dtype == v_cache.dtype == q.dtype):
        raise ValueError(f"decode_attention: q, k, v and the caches must share one of fp16/bf16/fp32 (or the caches "
                         f"be FP8 e4m3 with scales), got {q.dtype}, {k.dtype}, {v.dtype}, {k_cache.dtype}, "
                         f"{v_cache.dtype}")
    if fp8 != (k_scale is not None) or (k_scale is None) != (v_scale is None):
        raise ValueError("decode_attention: an FP8 cache needs k_scale and v_scale [num_blocks, block_size, Hkv]; "
                         "other dtypes take none")
    for name, sc in (("k_scale", k_scale), ("v_scale", v_scale)):
        if sc is not None and (sc.shape != k_cache.shape[:3] or sc.dtype != SCALE_DTYPE or not sc.is_contiguous()):
            raise ValueError(f"decode_attention: {name} must be contiguous {SCALE_DTYPE} {tuple(k_cache.shape[:3])}, "
                             f"got {sc.dtype} {tuple(sc.shape)}")
    if any(t.stride(-1) != 1 for t in (q, k, v)) or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("decode_attention: q, k, v need unit stride in D and the caches must be contiguous")
    if block_tables.dim() != 2 or block_tables.dtype != torch.int32 or block_tables.shape[0] != b:
        raise ValueError(f"decode_attention: block_tables must be int32 [B={b}, max_blocks], got "
                         f"{block_tables.dtype} {tuple(block_tables.shape)}")
    for name, t in (("seq_lens", seq_lens), ("slot_mapping", slot_mapping)):
        if t.shape != (b,) or t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"decode_attention: {name} must be int32/int64 [B={b}], got {t.dtype} {tuple(t.shape)}")
    if (positions is None) != (cos_sin_cache is None):
        raise ValueError("decode_attention: give positions and cos_sin_cache together (or neither: no RoPE)")
    if positions is not None and (positions.shape != (b,) or cos_sin_cache.dim() != 2
                                  or cos_sin_cache.shape[1] != d or cos_sin_cache.dtype != torch.float32):
        raise ValueError(f"decode_attention: want positions [B={b}] and an fp32 cos_sin_cache [max_pos, D={d}], got "
                         f"{tuple(positions.shape)} and {cos_sin_cache.dtype} {tuple(cos_sin_cache.shape)}")
    if counters is not None and (counters.dtype != torch.int32 or not counters.is_contiguous()):
        raise ValueError(f"decode_attention: counters must be a contiguous int32 buffer, got {counters.dtype}")
    devs = {t.device for t in (q, k, v, slot_mapping, k_cache, v_cache, block_tables, seq_lens, positions,
                               cos_sin_cache, counters, k_scale, v_scale) if t is not None}
    if len(devs) != 1:
        raise ValueError(f"decode_attention: all tensors must be on one device, got {devs}")


def decode_attention(q, k, v, slot_mapping, k_cache, v_cache, block_tables, seq_lens, positions=None,
                     cos_sin_cache=None, counters=None, sm_scale=None, num_splits: int | None = None,
                     max_seq_len: int | None = None, block_n: int | None = None, num_warps: int | None = None,
                     num_stages: int | None = None, min_tokens_per_split: int | None = None,
                     prefetch: bool | None = None, k_scale=None, v_scale=None) -> torch.Tensor:
    """RoPE (when positions is given) + cache write + paged decode attention in one launch; see the module NOTE.

    q [B, Hq, D], k, v [B, Hkv, D]: this step's projections (strided views of the packed qkv are fine), not modified.
    seq_lens [B] counts the new token. counters: a zeroed int32 buffer of >= B * Hkv entries that the kernel leaves
    zeroed (a CUDA-graphed caller keeps one; None allocates one). Unset tile / splits come from phase 3's
    decode_plan; `prefetch` (first tile before the PDL wait) from prefetch_first_tile (registers per tile:
    decode_resources.py). An FP8 cache (phase 3's e4m3 with fp16 k_scale / v_scale [num_blocks, block_size, Hkv])
    gets the new token quantised as write_kv_cache would (same bytes, same scales) and scored as the cache holds it.
    Returns out [B, Hq, D] in q's dtype.
    """
    _check(q, k, v, slot_mapping, k_cache, v_cache, block_tables, seq_lens, positions, cos_sin_cache, counters,
           k_scale, v_scale)
    b, hq, d = q.shape
    bs, hkv = k_cache.shape[1], k_cache.shape[2]
    g = hq // hkv
    max_len = max_seq_len if max_seq_len is not None else int(block_tables.shape[1] * bs)
    block_n, num_warps, num_stages, num_splits, min_tps = fused_plan(
        q.device, b, hkv, max_len, k_scale is not None, num_splits, block_n, num_warps, num_stages,
        min_tokens_per_split)
    out = torch.empty_like(q)
    if b == 0:
        return out
    split = num_splits > 1
    if split:
        po = torch.empty(b, hq, num_splits, d, dtype=torch.float32, device=q.device)
        lse = torch.empty(b, hq, num_splits, dtype=torch.float32, device=q.device)
        if counters is None:
            counters = torch.zeros(b * hkv, dtype=torch.int32, device=q.device)
        elif counters.numel() < b * hkv:
            raise ValueError(f"decode_attention: counters holds {counters.numel()} entries; B * Hkv = {b * hkv}")
    else:
        po = lse = out  # unused
        counters = counters if counters is not None else seq_lens  # unused
    rope = positions is not None
    gr = triton.next_power_of_2(g)
    s_pad = triton.next_power_of_2(num_splits)
    pdl, launch = pdl_args(q)
    sm_scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    quant = k_scale is not None
    decode_attention_kernel[(b, hkv, num_splits)](
        q, k, v, positions if rope else seq_lens, cos_sin_cache if rope else q, slot_mapping, k_cache, v_cache,
        k_scale if quant else k_cache, v_scale if quant else v_cache, block_tables, seq_lens, out, po, lse, counters,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos_sin_cache.stride(0) if rope else 0, block_tables.stride(0), out.stride(0), out.stride(1),
        sm_scale * LOG2E, num_splits, min_tps, BS=bs, HKV=hkv, G=g, G_PAD=max(16, triton.next_power_of_2(g)),
        GR=gr, HALF=d // 2, BLOCK_N=block_n, SPLIT=split, S_PAD=s_pad,
        S_CHUNK=max(1, min(s_pad, 4096 // (gr * d))), ROPE=rope, PREFETCH=prefetch_first_tile(b, hkv) if prefetch is None else prefetch,
        DOT_F32=interpreting() or q.dtype == torch.float32, PREC="ieee" if q.dtype == torch.float32 else "tf32",
        PDL=pdl, QUANT=quant, num_warps=num_warps, num_stages=num_stages, **launch)
    return out


def decode_attention_ref(q, k, v, slot_mapping, k_cache, v_cache, block_tables, seq_lens, positions=None,
                         cos_sin_cache=None, counters=None, sm_scale=None, k_scale=None, v_scale=None,
                         **_tiles) -> torch.Tensor:
    """The unfused composition in PyTorch: rope_qk_ref, phase 3's write_kv_cache_ref and paged_decode_ref (fp32)."""
    _check(q, k, v, slot_mapping, k_cache, v_cache, block_tables, seq_lens, positions, cos_sin_cache, counters,
           k_scale, v_scale)
    b, hq, d = q.shape
    hkv = k.shape[1]
    if positions is not None:
        qkv = rope_qk_ref(torch.cat((q.reshape(b, -1), k.reshape(b, -1), v.reshape(b, -1)), 1), positions,
                          cos_sin_cache, hq, hkv, d)
        q, k = qkv[:, :hq * d].view(b, hq, d), qkv[:, hq * d:(hq + hkv) * d].view(b, hkv, d)
    artifacts.get("kv_cache.write_ref")(k, v, slot_mapping, k_cache, v_cache, k_scale, v_scale)
    return artifacts.get("attention.paged_decode_ref")(q, k_cache, v_cache, block_tables, seq_lens.to(torch.int32),
                                                       k_scale, v_scale, sm_scale=sm_scale)
