"""Absorbed-MLA decode attention over a paged latent cache: Triton kernel (split-KV), wrapper, PyTorch reference.

    q_lat [B, H, DC]  (q_nope folded through W_UK: DC = kv_lora_rank = 512 in DeepSeek-V3)
    q_pe  [B, H, DR]  (the rotated rope part of q: DR = 64)
    kv_cache [num_blocks, block_size, DC + DR]: per token ONE row [c | k_pe], shared by every head
    block_table [B, max_blocks] int32 (logical block j of sequence b lives in physical block block_table[b, j])
    seq_lens [B] int32 (>= 1)           ->  o_lat [B, H, DC] = softmax(scale * (q_lat.c + q_pe.k_pe)) @ c

NOTE (design): this is MQA with a 576-wide key and a 512-wide value that is the first 512 numbers of the key. So one
program handles BLOCK_H heads of one sequence and reads each cached row ONCE for both the score (q . [c|k_pe]) and the
value (p @ c): the bytes per token are (DC + DR) * 2, the whole point of MLA. The token range is split across
NUM_SPLITS programs (flash-decoding) so a small batch still fills the GPU; a second tiny kernel merges the partial
results by their log-sum-exp (with one split, stage 1 writes the output itself). With many heads (128) the work
per byte is high (~2 * 128 * (576 + 512) FLOPs per 1,152 bytes), which is why BLOCK_H matters: the heads of a block
share every row loaded. The two GEMMs per tile are s = q . [c|k_pe]^T (two tl.dots chained into one accumulator: one
576-deep product) and acc += p . c, and both read the same shared-memory copy of the tile.
Layout knobs (see kernel_resources.py, which compiles them for sm_90a offline):
- Triton lays the score GEMM of this chained pair out with every warp along M, so with 8 warps a 64-head block has
  both warpgroups compute the SAME 64 x BLOCK_N scores (narrow m64n16 wgmmas at BLOCK_N 32).
- `dv_split=2` with `block_h=128`: each program keeps half of the 512 value dims (a 128 x 256 fp32 accumulator);
  the latent is loaded as its value half plus the other half, so nothing is read twice, and each warpgroup owns 64
  heads of the score GEMM. The two programs of a head block both compute the scores. (`dv_split=4` re-reads its
  quarter.) `reload_q` re-reads q per tile instead of keeping it resident.
- `swap_ab`: s^T = [c|k_pe] . q^T and o^T += c^T . p^T, putting tokens / value dims on the MMA's M side (the
  "swap AB" trick for a small M); per-head vectors (max, sum) then cost 8x the registers.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from common.deepseek import mla_latent_attention_ref
from common.paged_checks import (check_block_ids, require_float, require_power_of_two, require_tensors,
                                 values_checkable)

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _mla_tile(q_lat, q_b, q_pe, q_lat_ptrs, q_pe_ptrs, q_lat_mask, q_pe_mask, kv_ptr, bt_row_ptr, n0, end, s_blk, s_tok,
              scale_log2, m_i, l_i, acc, dv0,
              DC: tl.constexpr, DR: tl.constexpr, BLOCK_DC: tl.constexpr, BLOCK_DR: tl.constexpr, PAGE: tl.constexpr,
              BLOCK_N: tl.constexpr, PREC: tl.constexpr, DV_SPLIT: tl.constexpr, RELOAD_Q: tl.constexpr,
              SWAP_AB: tl.constexpr):
    """One BLOCK_N-token tile of the online softmax: rows read once, used for the score AND the value.
    SWAP_AB computes the transposes (tokens and value dims on the MMA's M side, heads on N): see the module NOTE."""
    dc = tl.arange(0, BLOCK_DC)
    dr = tl.arange(0, BLOCK_DR)
    tok = n0 + tl.arange(0, BLOCK_N)
    tmask = tok < end
    if PAGE % BLOCK_N == 0:  # the tile lies inside one page: one block-table read, a strided 2-D tile
        page = tl.load(bt_row_ptr + n0 // PAGE)
        row = kv_ptr + page.to(tl.int64) * s_blk + ((n0 % PAGE) + tl.arange(0, BLOCK_N)) * s_tok  # [BLOCK_N]
    else:  # tokens of the tile may sit on different pages: gather row by row
        page = tl.load(bt_row_ptr + tok // PAGE, mask=tmask, other=0)
        row = kv_ptr + page.to(tl.int64) * s_blk + (tok % PAGE) * s_tok  # [BLOCK_N] row starts
    if DV_SPLIT == 2:  # c = this program's value half of the latent, c_b the other half (scores only)
        da = dv0 + tl.arange(0, BLOCK_DC // 2)
        db = (dv0 + BLOCK_DC // 2) % BLOCK_DC + tl.arange(0, BLOCK_DC // 2)
        c = tl.load(row[:, None] + da[None, :], mask=tmask[:, None] & (da[None, :] < DC), other=0.0)
        c_b = tl.load(row[:, None] + db[None, :], mask=tmask[:, None] & (db[None, :] < DC), other=0.0)
    else:
        c = tl.load(row[:, None] + dc[None, :], mask=tmask[:, None] & (dc[None, :] < DC), other=0.0)  # [N, BLOCK_DC]
    pe = tl.load(row[:, None] + DC + dr[None, :], mask=tmask[:, None] & (dr[None, :] < DR), other=0.0)  # [N, DR]
    if RELOAD_Q:  # re-read q (an L2 hit) so it is staged in shared memory, not pinned in registers per warpgroup
        q_lat = tl.load(q_lat_ptrs, mask=q_lat_mask, other=0.0)
        q_pe = tl.load(q_pe_ptrs, mask=q_pe_mask, other=0.0)
    if SWAP_AB:  # s^T [BLOCK_N, BLOCK_H] = [c | pe] . [q_lat | q_pe]^T: one accumulator, 576-deep
        s = tl.dot(c, tl.trans(q_lat), input_precision=PREC)
        s = tl.dot(pe, tl.trans(q_pe), s, input_precision=PREC)
        s = tl.where(tmask[:, None], s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a fully masked tile before any token: keep zeros
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[None, :])
        l_i = l_i * alpha + tl.sum(p, 0)
        acc = tl.dot(tl.trans(c), p.to(c.dtype), acc * alpha[None, :], input_precision=PREC)  # [BLOCK_DC, BLOCK_H]
    else:  # s [BLOCK_H, BLOCK_N] = [q_lat | q_pe] . [c | pe]^T
        s = tl.dot(q_lat, tl.trans(c), input_precision=PREC)
        if DV_SPLIT == 2:
            s = tl.dot(q_b, tl.trans(c_b), s, input_precision=PREC)
        s = tl.dot(q_pe, tl.trans(pe), s, input_precision=PREC)
        s = tl.where(tmask[None, :], s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if DV_SPLIT <= 2:
            v = c
        else:  # this program accumulates only its chunk of the 512 value dims: reload that slice (an L1/L2 hit)
            dv = dv0 + tl.arange(0, BLOCK_DC // DV_SPLIT)
            v = tl.load(row[:, None] + dv[None, :], mask=tmask[:, None] & (dv[None, :] < DC), other=0.0)
        acc = tl.dot(p.to(c.dtype), v, acc * alpha[:, None], input_precision=PREC)
    return m_new, l_i, acc


@triton.jit
def mla_decode_kernel(q_lat_ptr, q_pe_ptr, kv_ptr, bt_ptr, lens_ptr, o_ptr, lse_ptr, scale_log2,
                      sq_b, sq_h, sp_b, sp_h, s_blk, s_tok, s_bt, so_b, so_h, so_s, so_d, sl_b, sl_h,
                      H, DC: tl.constexpr, DR: tl.constexpr, BLOCK_DC: tl.constexpr, BLOCK_DR: tl.constexpr,
                      PAGE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr,
                      LOOP_ITERS: tl.constexpr, PREC: tl.constexpr, DV_SPLIT: tl.constexpr,
                      RELOAD_Q: tl.constexpr, SWAP_AB: tl.constexpr):
    """Stage 1. Grid (cdiv(H, BLOCK_H) * DV_SPLIT, NUM_SPLITS, B): partial output [BLOCK_H, DC / DV_SPLIT] and lse
    of one token range. The head block (and value chunk) varies fastest, so the programs that read the same rows run
    together and share them in L2. DV_SPLIT > 1 trades recomputed scores for a smaller accumulator (registers)."""
    hb = tl.program_id(0) // DV_SPLIT
    dv0 = (tl.program_id(0) % DV_SPLIT) * (BLOCK_DC // DV_SPLIT)
    split = tl.program_id(1)
    b = tl.program_id(2)
    seq_len = tl.load(lens_ptr + b)
    per_split = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, seq_len)

    h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = h < H
    dc = tl.arange(0, BLOCK_DC)
    dr = tl.arange(0, BLOCK_DR)
    q_b = tl.zeros([BLOCK_H, BLOCK_DC // 2], q_lat_ptr.dtype.element_ty)  # unused unless DV_SPLIT == 2
    if DV_SPLIT == 2:  # q's columns split like the latent's: this program's value half first
        da = dv0 + tl.arange(0, BLOCK_DC // 2)
        db = (dv0 + BLOCK_DC // 2) % BLOCK_DC + tl.arange(0, BLOCK_DC // 2)
        q_lat_ptrs = q_lat_ptr + b * sq_b + h[:, None] * sq_h + da[None, :]
        q_lat_mask = hmask[:, None] & (da[None, :] < DC)
        q_b = tl.load(q_lat_ptr + b * sq_b + h[:, None] * sq_h + db[None, :],
                      mask=hmask[:, None] & (db[None, :] < DC), other=0.0)
    else:
        q_lat_ptrs = q_lat_ptr + b * sq_b + h[:, None] * sq_h + dc[None, :]
        q_lat_mask = hmask[:, None] & (dc[None, :] < DC)
    q_pe_ptrs = q_pe_ptr + b * sp_b + h[:, None] * sp_h + dr[None, :]
    q_pe_mask = hmask[:, None] & (dr[None, :] < DR)
    q_lat = tl.load(q_lat_ptrs, mask=q_lat_mask, other=0.0)  # [BLOCK_H, BLOCK_DC (/ 2 when DV_SPLIT == 2)]
    q_pe = tl.load(q_pe_ptrs, mask=q_pe_mask, other=0.0)  # [BLOCK_H, BLOCK_DR]

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    if SWAP_AB:
        acc = tl.zeros([BLOCK_DC, BLOCK_H], tl.float32)  # o^T
    else:
        acc = tl.zeros([BLOCK_H, BLOCK_DC // DV_SPLIT], tl.float32)
    if LOOP_ITERS == 0:  # compiled: a data-dependent trip count
        for n0 in range(start, end, BLOCK_N):
            m_i, l_i, acc = _mla_tile(q_lat, q_b, q_pe, q_lat_ptrs, q_pe_ptrs, q_lat_mask, q_pe_mask, kv_ptr,
                                      bt_ptr + b * s_bt, n0, end, s_blk, s_tok, scale_log2, m_i, l_i, acc, dv0, DC,
                                      DR, BLOCK_DC, BLOCK_DR, PAGE, BLOCK_N, PREC, DV_SPLIT, RELOAD_Q, SWAP_AB)
    else:  # Triton's CPU interpreter cannot take a tensor as a loop bound: a fixed count of (masked) tiles
        for it in range(LOOP_ITERS):
            m_i, l_i, acc = _mla_tile(q_lat, q_b, q_pe, q_lat_ptrs, q_pe_ptrs, q_lat_mask, q_pe_mask, kv_ptr,
                                      bt_ptr + b * s_bt, start + it * BLOCK_N, end, s_blk, s_tok, scale_log2, m_i,
                                      l_i, acc, dv0, DC, DR, BLOCK_DC, BLOCK_DR, PAGE, BLOCK_N, PREC, DV_SPLIT,
                                      RELOAD_Q, SWAP_AB)

    empty = l_i == 0.0  # a split past the end of a short sequence
    inv_l = 1.0 / tl.where(empty, 1.0, l_i)
    lse = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    o_dt = o_ptr.dtype.element_ty  # fp32 partials, or the output dtype itself when NUM_SPLITS == 1
    if SWAP_AB:  # o^T [BLOCK_DC, BLOCK_H] is stored as it lies (no register transpose)
        tl.store(o_ptr + b * so_b + h[None, :] * so_h + split * so_s + dc[:, None] * so_d,
                 (acc * inv_l[None, :]).to(o_dt), mask=hmask[None, :] & (dc[:, None] < DC))
    else:
        dv = dv0 + tl.arange(0, BLOCK_DC // DV_SPLIT)
        tl.store(o_ptr + b * so_b + h[:, None] * so_h + split * so_s + dv[None, :] * so_d,
                 (acc * inv_l[:, None]).to(o_dt), mask=hmask[:, None] & (dv[None, :] < DC))
    tl.store(lse_ptr + b * sl_b + h * sl_h + split, lse, mask=hmask)


@triton.jit
def mla_merge_kernel(o_part_ptr, lse_ptr, out_ptr, so_b, so_h, so_s, so_d, sl_b, sl_h, sout_b, sout_h,
                     DC: tl.constexpr, BLOCK_DC: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr):
    """Stage 2. Grid (B, H): merge the NUM_SPLITS partial outputs by their log-sum-exp (base 2)."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.arange(0, BLOCK_S)
    dc = tl.arange(0, BLOCK_DC)
    lse = tl.load(lse_ptr + b * sl_b + h * sl_h + sp, mask=sp < NUM_SPLITS, other=float("-inf"))  # [BLOCK_S]
    w = tl.exp2(lse - tl.max(lse, 0))
    o = tl.load(o_part_ptr + b * so_b + h * so_h + sp[:, None] * so_s + dc[None, :] * so_d,
                mask=(sp[:, None] < NUM_SPLITS) & (dc[None, :] < DC), other=0.0)  # [BLOCK_S, BLOCK_DC]
    out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    tl.store(out_ptr + b * sout_b + h * sout_h + dc, out.to(out_ptr.dtype.element_ty), mask=dc < DC)


def check_args(q_lat, q_pe, kv_cache, block_table, seq_lens) -> None:
    """Raise a ValueError naming the problem for inputs the kernel cannot take."""
    require_tensors("mla_paged_decode", q_lat=q_lat, q_pe=q_pe, kv_cache=kv_cache, block_table=block_table,
                    seq_lens=seq_lens)
    if q_lat.dim() != 3 or q_pe.dim() != 3 or q_lat.shape[:2] != q_pe.shape[:2]:
        raise ValueError(f"q_lat must be [B, H, DC] and q_pe [B, H, DR], got {tuple(q_lat.shape)}, {tuple(q_pe.shape)}")
    if kv_cache.dim() != 3 or kv_cache.shape[2] != q_lat.shape[2] + q_pe.shape[2]:
        raise ValueError(f"kv_cache must be [num_blocks, block_size, DC + DR = {q_lat.shape[2] + q_pe.shape[2]}], "
                         f"got {tuple(kv_cache.shape)}")
    if not (q_lat.dtype == q_pe.dtype == kv_cache.dtype) or q_lat.dtype not in (torch.float32, torch.float16,
                                                                               torch.bfloat16):
        raise ValueError(f"q_lat, q_pe, kv_cache must share one float dtype, got {q_lat.dtype}, {q_pe.dtype}, "
                         f"{kv_cache.dtype}")
    if q_lat.stride(-1) != 1 or q_pe.stride(-1) != 1 or kv_cache.stride(-1) != 1:
        raise ValueError("the last dim of q_lat, q_pe and kv_cache must be contiguous")
    b = q_lat.shape[0]
    if block_table.dim() != 2 or block_table.shape[0] != b or block_table.dtype != torch.int32:
        raise ValueError(f"block_table must be int32 [B={b}, max_blocks], got {block_table.dtype} "
                         f"{tuple(block_table.shape)}")
    if seq_lens.shape != (b,) or seq_lens.dtype != torch.int32:
        raise ValueError(f"seq_lens must be int32 [B={b}], got {seq_lens.dtype} {tuple(seq_lens.shape)}")
    if block_table.stride(1) != 1 or seq_lens.stride(0) != 1:
        raise ValueError("block_table's rows and seq_lens must be contiguous (the kernels index them with unit stride)")
    devs = {t.device for t in (q_lat, q_pe, kv_cache, block_table, seq_lens)}
    if len(devs) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devs))}")
    page = kv_cache.shape[1]
    if b == 0:
        return
    if int(seq_lens.min()) < 1:  # one host sync: check=False skips it (CUDA graphs, benchmarks)
        raise ValueError("every sequence needs at least one cached token (seq_lens >= 1)")
    if int(seq_lens.max()) > block_table.shape[1] * page:
        raise ValueError(f"seq_lens up to {int(seq_lens.max())} need more than block_table's "
                         f"{block_table.shape[1]} blocks of {page} tokens")
    if values_checkable(block_table, seq_lens):  # reads every id: only where that costs no device sync
        check_block_ids("mla_paged_decode", block_table, seq_lens, page, kv_cache.shape[0])


def check_splits(num_splits: int) -> None:
    if not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits must be a positive int, got {num_splits!r}")


def default_num_splits(batch: int, head_blocks: int, max_len: int, num_sms: int = 132) -> int:
    """No split once the (batch x head block) programs alone nearly fill the GPU (>= 3/4 of the SMs); below that,
    enough splits to give every SM about two programs, none shorter than 256 tokens.
    NOTE (H100, results/bench_mla_h100.json): 128 heads in 64-head blocks at B=64 = 128 programs on 132 SMs; 1 split
    (284 us) beat 2 (301) and 4 (322): the merge and fp32 partials cost more than 4 idle SMs. 16 heads: 5 splits."""
    programs = max(1, batch * head_blocks)
    if 4 * programs >= 3 * num_sms:
        return 1
    want = math.ceil(2 * num_sms / programs)
    return max(1, min(want, max_len // 256 or 1, 64))


def gluon_num_splits(batch: int, head_blocks: int, max_len: int, num_sms: int = 132) -> int:
    """The Gluon kernels' splits: as many as keep the grid to ONE wave (each program takes a whole SM: ~222 KB of
    shared memory), none shorter than 256 tokens. NOTE (H100, results/ab_seesaw_s1209d_h100.json, seesaw, B=64, 4K):
    at 16 heads (64 programs) 2 splits took 109.4 us against 124.6 with 1; `default_num_splits` (the Triton
    kernel's rule, two programs an SM) gave 5 there: 124.1 us in bench_mla_s1206_h100. At 128 heads (128 programs)
    both rules give 1."""
    programs = max(1, batch * head_blocks)
    return max(1, min(num_sms // programs, max_len // 256 or 1, 64))


def default_block_h(heads: int) -> int:
    """H100 winners (B=64, ctx 4K): 64-head blocks at 128 heads (1.06 TB/s), 16-head blocks at 16 (2.06 TB/s)."""
    return 64 if heads >= 64 else 16


TRITON_DEFAULTS = (None, 64, 8, 2, 1, False, False)  # mla_paged_decode's block_h .. swap_ab defaults
# the Gluon loop taken when none is asked for. H200, 2026-12-05 (results/bench_mla_s1205_h200.json, 128 heads, B=64, 4K):
# serial 176 us, pipelined 259 us. H100, 2026-12-05 (results/bench_mla_seesaw_h100.json, same shape, one run):
# serial 180 us, pipelined 260 us, seesaw 135 us (2.23 TB/s); at 16 heads seesaw 126 us against serial 134
DEFAULT_GLUON_SCHEDULE = "seesaw"


def use_gluon(q_lat: torch.Tensor, kv_cache: torch.Tensor) -> bool:
    """Whether backend="auto" takes the Gluon kernel: a Hopper GPU, bf16 / fp16, DeepSeek-V3's 512 + 64 latent,
    pages of 64k tokens (mla_decode_gluon.supported), and a Triton that has Gluon."""
    if not q_lat.is_cuda:
        return False
    try:
        from phase2_mla import mla_decode_gluon as gk
        return gk.supported(q_lat, kv_cache) is None
    except ImportError:  # a Triton without triton.experimental.gluon
        return False


def mla_paged_decode(q_lat: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor,
                     seq_lens: torch.Tensor, scale: float, max_seq_len: int | None = None,
                     num_splits: int | None = None,
                     block_h: int | None = None, block_n: int = 64, num_warps: int = 8, num_stages: int = 2,
                     dv_split: int = 1, reload_q: bool = False, swap_ab: bool = False,
                     backend: str = "auto", check: bool = True, gluon_schedule: str | None = None) -> torch.Tensor:
    """o_lat [B, H, DC]. `max_seq_len` (default: seq_lens.max(), a host sync) sizes the split count. `swap_ab`
    computes s^T and o^T (tokens / value dims as the MMA's rows; see the module NOTE); it takes no dv_split. Defaults:
    the H100 sweep's winners (`default_block_h`, 64-token tiles, 8 warps, 2 stages, `default_num_splits`).
    `backend="gluon"` runs mla_decode_gluon.py's Hopper kernel instead (64-head blocks, 64-token tiles; the Triton
    layout knobs do not apply; ValueError where it cannot run, e.g. on the CPU); `gluon_schedule` picks its loop
    (None: DEFAULT_GLUON_SCHEDULE): "serial", "pipelined" (mla_decode_gluon_pipelined.py: the next tile's scores
    overlap this tile's softmax) or "seesaw" (mla_decode_gluon_seesaw.py: two warpgroups on alternate tiles, one's
    softmax under the other's MMAs).
    `backend="auto"` (the default) takes the Gluon kernel where it can run (`use_gluon`) and Triton elsewhere.
    NOTE (H200, results/bench_mla_s1205_h200.json, 2026-12-05): at 128 heads / B=64 / 4K the Gluon serial kernel took 177 us
    (1.71 TB/s) against Triton's best 269 us (1.12 TB/s) in the same run; at 16 heads 117 vs 126 us. On the H100
    (results/bench_mla_seesaw_h100.json) the seesaw schedule took 135 us (2.23 TB/s) against serial's 180."""
    if check:
        check_args(q_lat, q_pe, kv_cache, block_table, seq_lens)
    require_float("mla_paged_decode", "scale", scale)
    require_power_of_two("mla_paged_decode", "block_h", block_h)
    require_power_of_two("mla_paged_decode", "block_n", block_n)
    b, h, dc = q_lat.shape
    dr, page = q_pe.shape[2], kv_cache.shape[1]
    if b == 0:
        return q_lat.new_empty(0, h, dc)
    if num_splits is not None:
        check_splits(num_splits)
    if backend not in ("auto", "triton", "gluon"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'gluon', got {backend!r}")
    if backend == "auto":
        triton_knobs = (block_h, block_n, num_warps, num_stages, dv_split, reload_q, swap_ab) != TRITON_DEFAULTS
        backend = "gluon" if not triton_knobs and use_gluon(q_lat, kv_cache) else "triton"
    if backend != "gluon" and gluon_schedule is not None:
        raise ValueError(f"gluon_schedule={gluon_schedule!r} needs backend='gluon'")
    gluon_schedule = gluon_schedule or DEFAULT_GLUON_SCHEDULE
    if backend == "gluon":
        from phase2_mla import mla_decode_gluon as gk
        gk.schedule_kernel(gluon_schedule)  # ValueError for an unknown schedule, before the device checks
        why = gk.supported(q_lat, kv_cache)
        if why:
            raise ValueError(f"backend='gluon' {why}")
        if num_splits is None:
            max_len = max_seq_len if max_seq_len is not None else int(seq_lens.max())
            num_splits = gluon_num_splits(b, triton.cdiv(h, gk.BLOCK_H), max_len,
                                          torch.cuda.get_device_properties(q_lat.device).multi_processor_count)
        return gk.mla_paged_decode_gluon(q_lat, q_pe, kv_cache, block_table, seq_lens, scale, num_splits, check=False,
                                         schedule=gluon_schedule)
    block_h = default_block_h(h) if block_h is None else block_h
    bh = min(block_h, triton.next_power_of_2(h)) if q_lat.device.type == "cpu" else max(16, block_h)
    hb = triton.cdiv(h, bh)
    if num_splits is None:
        max_len = max_seq_len if max_seq_len is not None else int(seq_lens.max())
        sms = torch.cuda.get_device_properties(q_lat.device).multi_processor_count if q_lat.is_cuda else 4
        num_splits = default_num_splits(b, hb * dv_split, max_len, sms)
    loop_iters = 0
    if INTERPRETED:
        max_len = max_seq_len if max_seq_len is not None else int(seq_lens.max())
        loop_iters = triton.cdiv(triton.cdiv(triton.cdiv(max_len, num_splits), block_n) * block_n, block_n)
    block_dc = triton.next_power_of_2(dc)
    block_dr = max(16, triton.next_power_of_2(dr))
    if dv_split not in (1, 2, 4) or triton.next_power_of_2(dc) // dv_split < 16:
        raise ValueError(f"dv_split must be 1, 2 or 4 and leave value chunks of >= 16, got {dv_split} for DC={dc}")
    if swap_ab and dv_split != 1:
        raise ValueError("swap_ab keeps every value dim in one program: use dv_split=1 with it")
    out = torch.empty(b, h, dc, dtype=q_lat.dtype, device=q_lat.device)
    lse = torch.empty(b, h, num_splits, dtype=torch.float32, device=q_lat.device)
    if num_splits == 1:  # one range per sequence: stage 1 writes the normalised output itself, no merge
        o_part = out.view(b, h, 1, dc)
    elif swap_ab:  # [B, H, S, DC] with heads fastest, the order in which o^T is stored
        o_part = torch.empty(b, num_splits, dc, h, dtype=torch.float32, device=q_lat.device).permute(0, 3, 1, 2)
    else:
        o_part = torch.empty(b, h, num_splits, dc, dtype=torch.float32, device=q_lat.device)
    so = o_part.stride()
    mla_decode_kernel[(hb * dv_split, num_splits, b)](
        q_lat, q_pe, kv_cache, block_table, seq_lens, o_part, lse, scale * 1.4426950408889634,
        q_lat.stride(0), q_lat.stride(1), q_pe.stride(0), q_pe.stride(1), kv_cache.stride(0), kv_cache.stride(1),
        block_table.stride(0), so[0], so[1], so[2], so[3], lse.stride(0), lse.stride(1),
        h, DC=dc, DR=dr, BLOCK_DC=block_dc, BLOCK_DR=block_dr, PAGE=page, BLOCK_H=bh, BLOCK_N=block_n,
        NUM_SPLITS=num_splits, LOOP_ITERS=loop_iters, PREC="ieee" if q_lat.dtype == torch.float32 else "tf32",
        DV_SPLIT=dv_split, RELOAD_Q=reload_q, SWAP_AB=swap_ab, num_warps=num_warps, num_stages=num_stages)
    if num_splits > 1:
        mla_merge_kernel[(b, h)](o_part, lse, out, so[0], so[1], so[2], so[3], lse.stride(0), lse.stride(1),
                                 out.stride(0), out.stride(1), DC=dc, BLOCK_DC=block_dc, NUM_SPLITS=num_splits,
                                 BLOCK_S=triton.next_power_of_2(num_splits), num_warps=4)
    return out


def gather_latents(kv_cache: torch.Tensor, block_table: torch.Tensor, b: int, n: int) -> torch.Tensor:
    """The first n cached rows [n, DC + DR] of sequence b, in logical order."""
    page = kv_cache.shape[1]
    t = torch.arange(n, device=kv_cache.device)
    return kv_cache[block_table[b, t // page].long(), t % page]


def mla_paged_decode_ref(q_lat, q_pe, kv_cache, block_table, seq_lens, scale: float) -> torch.Tensor:
    """Plain PyTorch: gather each sequence's rows through the block table, attend in latent space (fp32)."""
    dc = q_lat.shape[2]
    outs = []
    for b in range(q_lat.shape[0]):
        rows = gather_latents(kv_cache, block_table, b, int(seq_lens[b])).float()  # [n, DC + DR]
        o = mla_latent_attention_ref(q_lat[b, :, None][None].float(), q_pe[b, :, None][None].float(),
                                     rows[None, :, :dc], rows[None, :, dc:], scale)  # [1, H, 1, DC]
        outs.append(o[0, :, 0])
    return torch.stack(outs).to(q_lat.dtype)
