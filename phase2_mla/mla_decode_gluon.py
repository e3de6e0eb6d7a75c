"""Absorbed-MLA paged decode in Gluon (Triton's explicit-layout dialect) for Hopper: each score tile computed ONCE.

Same contract as `mla_decode.mla_paged_decode` (q_lat [B, H, DC], q_pe [B, H, DR], a paged latent cache
[num_blocks, page, DC + DR], block table, seq_lens) and the same split-KV + merge scheme; bf16 / fp16 on sm_90 only.

NOTE (why a second kernel): the Triton kernel spends its tensor-core time twice on the scores. Triton lays a dot out
with every warp along M when its result feeds another dot (flash attention's p @ v), so with 8 warps and a 64-head
block BOTH warpgroups compute the SAME 64 x 64 score tile; only the value GEMM is split between them (each keeps
256 of the 512 value dims). That is 1.53x the minimal MMA work at DeepSeek-V3's 128 heads, where decode is
tensor-core bound (~240 FLOPs per KV byte). A Triton variant tried during development (not kept) routed p and the
rescale factor through a global scratch to break the chain: the score GEMM did get the split layout ([4, 2]), but
the CTA barrier it needs switched off Triton's software pipeliner (sm_90a compile: no async copies, 255 registers
and 68 bytes spilled; without the barrier it pipelined but wanted 240 KB of shared memory, over the 227 KB a block
may take). Gluon states what FlashMLA does by hand:

  - 8 warps = 2 warpgroups. The score tile s [64 heads, 64 tokens] has the layout warps [4, 2]: warpgroup g computes
    the scores of tokens 32g .. 32g + 31 (m64n32k16 wgmmas over the 576-deep q . [c | k_pe]); the row max and sum
    cross the two warpgroups (a small shared-memory reduction the compiler emits).
  - p (bf16) goes to shared memory; after a fence and a CTA barrier both warpgroups use the whole tile: warpgroup g
    accumulates value dims 256g .. 256g + 255 (m64n256k16, a 64 x 256 fp32 accumulator = 128 registers a thread).
  - The KV tile (one page of 64 rows, 72 KB: the latent and the rope key) arrives by TMA into a 2-stage ring while
    the previous tile computes; q (72 KB) stays in shared memory. 72 + 2 x 72 + 8 (p) = 224 KB of the 227 KB.
  - A partial last tile may hold garbage (even NaN) past the sequence end: its scores are masked to -inf, and its
    latent rows are zeroed in shared memory before p @ c (0 x NaN would be NaN).

`schedule="pipelined"` runs mla_decode_gluon_pipelined.py's kernel instead: the next tile's score wgmma overlaps
this tile's softmax (32-token tiles, a 4-slot ring; its NOTE), sharing this module's tile / softmax / store helpers.
`schedule="seesaw"` runs mla_decode_gluon_seesaw.py's: FlashMLA's two-warpgroup form (each warpgroup whole 64 x 64
score tiles of alternate KV tiles, m64n64k16; one's softmax under the other's wgmmas; warp_specialize partitions).
Not done here: q in registers.
Correctness is checked on the GPU only: Triton's CPU interpreter does not run Gluon. On the CPU the kernel is
compiled for sm_90a (`hopper_resources_gluon`), which checks shapes, layouts and the shared-memory budget.
"""
from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

BLOCK_H = 64  # heads per program: the wgmma M of one warpgroup
BLOCK_N = 64  # tokens per tile: one page of 64 (FlashMLA's page size); pages must be a multiple of it
NUM_WARPS = 8
NUM_STAGES = 2
SCHEDULES = ("serial", "pipelined", "seesaw", "seesaw_noprefetch", "seesaw_prefetch", "seesaw_chunked")
# the seesaw kernel's variants: (latent TMA boxes per tile, L2 prefetch distance in tiles; None: seesaw_prefetch_rule)
SEESAW_VARIANTS = {"seesaw": (2, None), "seesaw_noprefetch": (2, 0), "seesaw_prefetch": (2, 1),
                   "seesaw_chunked": (8, 0)}


def seesaw_prefetch_rule(head_blocks: int) -> int:
    """The default seesaw's L2 prefetch distance: one tile ahead where two or more head blocks share each
    sequence's latent (the compute-bound 128-head case), none otherwise. NOTE (H100, interleaved rounds,
    results/ab_seesaw_s1209d_h100.json, B=64, 4K): 128 heads / 1 split 134.8 us one tile ahead vs 136.8 without
    vs 136.9 two ahead; 16 heads / 2 splits (128 programs streaming distinct latents at 2.76 TB/s, near the copy
    ceiling) 112.9 / 109.4 / 128.7: the prefetch only adds L2 traffic there; 16 heads / 1 split (64 programs,
    latency-bound) 116.6 / 124.6 / 120.1, but 2 splits beat it. Prefetching with every thread (128 x 288 B
    instead of one 36 KB bulk prefetch) cost 174.5 vs 136.4 us (ab_seesaw_s1209_h100.json)."""
    return 1 if head_blocks >= 2 else 0


def _layouts(dc: int, dr: int, block_n: int = BLOCK_N, dtype=gl.bfloat16, c_cols: int | None = None):
    """Shared layouts of the q / latent / rope-key / p tiles (128-byte swizzle: what TMA and wgmma both read);
    c_cols: the latent box's columns (default dc; the seesaw loads halves)."""
    return (gl.NVMMASharedLayout.get_default_for([BLOCK_H, dc], dtype),
            gl.NVMMASharedLayout.get_default_for([BLOCK_H, dr], dtype),
            gl.NVMMASharedLayout.get_default_for([block_n, c_cols or dc], dtype),
            gl.NVMMASharedLayout.get_default_for([block_n, dr], dtype))


@gluon.constexpr_function
def split_columns_layout(n):
    """The wgmma accumulator layout of a [64, n] tile split by columns between the 2 warpgroups (warps [4, 2]):
    each warpgroup issues m64 x (n / 2) wgmmas over its half."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2], instr_shape=[16, n // 2, 16])


SPLIT_ALIGN = gl.constexpr(64)  # split ranges start on multiples of 64 tokens in every schedule (same partials)


@gluon.jit
def split_range(lens_ptr, b, split, NUM_SPLITS: gl.constexpr, BLOCK_N: gl.constexpr):
    """(start, end, n_tiles) of this program's token range: split `split` of sequence b, in tiles of BLOCK_N."""
    seq_len = gl.load(lens_ptr + b)
    per_split = gl.cdiv(gl.cdiv(seq_len, NUM_SPLITS), SPLIT_ALIGN) * SPLIT_ALIGN
    start = split * per_split
    end = gl.minimum(start + per_split, seq_len)
    return start, end, gl.maximum(gl.cdiv(end - start, BLOCK_N), 0)


@gluon.jit
def allocate_and_load_q(q_desc, qpe_desc, c_desc, pe_desc, q_row, STAGES: gl.constexpr, BLOCK_N: gl.constexpr,
                        P_BUFS: gl.constexpr):
    """Both schedules' prologue: shared memory (q, q_pe, the STAGES-slot ring of latent / rope-key tiles, P_BUFS
    p buffers, the mbarriers), the barriers initialised, and q / q_pe of rows q_row .. q_row + 63 on their way by
    TMA (q viewed as [B * H, DC]: rows past this sequence's heads are loaded, never stored). Returns
    (q_smem, qpe_smem, c_smem, pe_smem, p_smem [P_BUFS, 64, BLOCK_N], q_bar, kv_bar)."""
    BH: gl.constexpr = q_desc.block_type.shape[0]
    DC: gl.constexpr = q_desc.block_type.shape[1]
    DR: gl.constexpr = qpe_desc.block_type.shape[1]
    dtype: gl.constexpr = q_desc.dtype
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BH, BLOCK_N], dtype)
    q_smem = gl.allocate_shared_memory(dtype, [BH, DC], q_desc.layout)
    qpe_smem = gl.allocate_shared_memory(dtype, [BH, DR], qpe_desc.layout)
    c_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, DC], c_desc.layout)
    pe_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, DR], pe_desc.layout)
    p_smem = gl.allocate_shared_memory(dtype, [P_BUFS, BH, BLOCK_N], p_layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    kv_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(kv_bar.index(i), count=1)
    fence_async_shared()  # the barriers' initialisation is visible to the TMA unit
    mbarrier.expect(q_bar, q_desc.block_type.nbytes + qpe_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row, 0], q_bar, q_smem)
    tma.async_copy_global_to_shared(qpe_desc, [q_row, 0], q_bar, qpe_smem)
    return q_smem, qpe_smem, c_smem, pe_smem, p_smem, q_bar, kv_bar


@gluon.jit
def load_tile(c_desc, pe_desc, bt_row, kv_bar, c_smem, pe_smem, n0, slot, pred, PAGE: gl.constexpr):
    """TMA the tile at token n0 (latent rows and rope keys, one page's slice) into ring slot `slot`, if pred."""
    DC: gl.constexpr = c_desc.block_type.shape[1]
    page = gl.load(bt_row + n0 // PAGE, mask=pred, other=0)
    r = page * PAGE + n0 % PAGE
    bar = kv_bar.index(slot)
    mbarrier.expect(bar, c_desc.block_type.nbytes + pe_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(c_desc, [r, 0], bar, c_smem.index(slot), pred=pred)
    tma.async_copy_global_to_shared(pe_desc, [r, DC], bar, pe_smem.index(slot), pred=pred)


@gluon.jit
def wait_tile(kv_bar, c_smem, i, n0, end, pred, STAGES: gl.constexpr):
    """Wait (if pred) for tile i (token n0) in slot i % STAGES; in a partial last tile zero the latent rows past
    `end` (they may hold NaN: 0 x NaN would reach p @ c). Returns the slot's latent tile."""
    slot = i % STAGES
    mbarrier.wait(kv_bar.index(slot), phase=(i // STAGES) & 1, pred=pred)
    c_tile = c_smem.index(slot)
    zero_past_end(c_tile, n0, end)
    return c_tile


@gluon.jit
def zero_past_end(c_tile, n0, end):
    """Zero the latent rows of a [BLOCK_N, cols] tile (token n0 first) at or past `end`, if the tile is partial
    (they may hold NaN: 0 x NaN would reach p @ c); then fence and barrier for the wgmmas that read it."""
    BLOCK_N: gl.constexpr = c_tile.shape[0]
    DC: gl.constexpr = c_tile.shape[1]
    valid = end - n0
    if (valid > 0) & (valid < BLOCK_N):  # uniform: only the last tile of a range is partial
        zero_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [gl.num_warps(), 1], [1, 0])
        rows = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, zero_layout))
        for j in gl.static_range(DC // 64):
            chunk = c_tile.slice(64 * j, 64, dim=1)
            x = chunk.load(zero_layout)
            chunk.store(gl.where(rows[:, None] < valid, x, gl.zeros_like(x)))
        fence_async_shared()
        gl.thread_barrier()


@gluon.jit
def score_mma(q_smem, qpe_smem, c_tile, pe_tile, s_zero):
    """S = q . [c | k_pe]^T of one tile, issued asynchronously (two commit groups: latent, rope key)."""
    s = warpgroup_mma(q_smem, c_tile.permute((1, 0)), s_zero, use_acc=False, is_async=True)
    return warpgroup_mma(qpe_smem, pe_tile.permute((1, 0)), s, is_async=True)


@gluon.jit
def online_softmax(s, m_i, l_i, n0, end, scale_log2):
    """One tile of the online softmax (base 2): mask tokens past `end`, new row max, p, the rescale factor alpha."""
    BLOCK_N: gl.constexpr = s.shape[1]
    tok = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s.type.layout))
    s = gl.where((tok < end)[None, :], s * scale_log2, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, axis=1))
    alpha = gl.exp2(m_i - m_new)  # m_new is finite: every tile holds at least one token of the range
    p = gl.exp2(s - m_new[:, None])
    return p, alpha, m_new, l_i * alpha + gl.sum(p, axis=1)


@gluon.jit
def store_partial(acc, m_i, l_i, o_ptr, lse_ptr, b, hb, split, so_b, so_h, so_s, sl_b, sl_h, H):
    """o = acc / l and lse = m + log2 l of this range (an empty range: o = 0, lse = -inf) for heads < H."""
    BH: gl.constexpr = acc.shape[0]
    DC: gl.constexpr = acc.shape[1]
    o_layout: gl.constexpr = acc.type.layout
    empty = l_i == 0.0  # a split past the end of a short sequence
    inv_l = 1.0 / gl.where(empty, 1.0, l_i)
    lse = gl.where(empty, float("-inf"), m_i + gl.log2(gl.where(empty, 1.0, l_i)))
    out = acc * gl.convert_layout(inv_l, gl.SliceLayout(1, o_layout))[:, None]
    h_o = hb * BH + gl.arange(0, BH, layout=gl.SliceLayout(1, o_layout))
    d_o = gl.arange(0, DC, layout=gl.SliceLayout(0, o_layout))
    gl.store(o_ptr + b * so_b + h_o[:, None] * so_h + split * so_s + d_o[None, :], out.to(o_ptr.dtype.element_ty),
             mask=(h_o < H)[:, None])
    h_s = hb * BH + gl.arange(0, BH, layout=m_i.type.layout)
    gl.store(lse_ptr + b * sl_b + h_s * sl_h + split, lse, mask=h_s < H)


@gluon.jit
def mla_decode_gluon_kernel(q_desc, qpe_desc, c_desc, pe_desc, bt_ptr, lens_ptr, o_ptr, lse_ptr, scale_log2,
                            s_bt, so_b, so_h, so_s, sl_b, sl_h, H,
                            DC: gl.constexpr, DR: gl.constexpr, PAGE: gl.constexpr, BLOCK_N: gl.constexpr,
                            NUM_SPLITS: gl.constexpr, STAGES: gl.constexpr):
    """Grid (cdiv(H, 64), NUM_SPLITS, B), like the Triton kernel: partial o [64, DC] and lse of one token range
    (or, with one split, the normalised output itself)."""
    BH: gl.constexpr = q_desc.block_type.shape[0]
    dtype: gl.constexpr = q_desc.dtype
    s_layout: gl.constexpr = split_columns_layout(BLOCK_N)  # warpgroup g: token columns [32g, 32g + 32)
    o_layout: gl.constexpr = split_columns_layout(DC)  # warpgroup g: value dims [256g, 256g + 256)

    hb = gl.program_id(0)
    split = gl.program_id(1)
    b = gl.program_id(2)
    start, end, n_tiles = split_range(lens_ptr, b, split, NUM_SPLITS, BLOCK_N)

    q_smem, qpe_smem, c_smem, pe_smem, p_bufs, q_bar, kv_bar = allocate_and_load_q(
        q_desc, qpe_desc, c_desc, pe_desc, b * H + hb * BH, STAGES, BLOCK_N, 1)
    p_smem = p_bufs.index(0)
    bt_row = bt_ptr + b * s_bt
    load_tile(c_desc, pe_desc, bt_row, kv_bar, c_smem, pe_smem, start, 0, n_tiles > 0, PAGE)  # tile 0 -> slot 0

    m_i = gl.full([BH], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([BH], gl.float32, layout=gl.SliceLayout(1, s_layout))
    acc = gl.zeros([BH, DC], gl.float32, layout=o_layout)
    s_zero = gl.zeros([BH, BLOCK_N], gl.float32, layout=s_layout)
    mbarrier.wait(q_bar, phase=0)

    for t in range(n_tiles):
        n0 = start + t * BLOCK_N
        # every warpgroup is done with tile t - 1 (its p @ c waited) and with p_smem: the ring slot t + 1 is free
        gl.thread_barrier()
        load_tile(c_desc, pe_desc, bt_row, kv_bar, c_smem, pe_smem, n0 + BLOCK_N, (t + 1) % STAGES,
                  t + 1 < n_tiles, PAGE)
        c_tile = wait_tile(kv_bar, c_smem, t, n0, end, True, STAGES)

        s = score_mma(q_smem, qpe_smem, c_tile, pe_smem.index(t % STAGES), s_zero)
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
        p, alpha, m_i, l_i = online_softmax(s, m_i, l_i, n0, end, scale_log2)

        p_smem.store(p.to(dtype))
        fence_async_shared()  # p's generic-proxy writes before the wgmma (async proxy) reads them
        gl.thread_barrier()  # both warpgroups' halves of p are written
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
        acc = warpgroup_mma(p_smem, c_tile, acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))

    mbarrier.invalidate(q_bar)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(kv_bar.index(i))
    store_partial(acc, m_i, l_i, o_ptr, lse_ptr, b, hb, split, so_b, so_h, so_s, sl_b, sl_h, H)


def schedule_kernel(schedule: str):
    """(kernel, tokens per tile, ring slots) of a schedule name (ValueError for another name)."""
    if schedule == "serial":
        return mla_decode_gluon_kernel, BLOCK_N, NUM_STAGES
    if schedule == "pipelined":
        from phase2_mla import mla_decode_gluon_pipelined as pk
        return pk.mla_decode_gluon_pipelined_kernel, pk.PIPE_BLOCK_N, pk.PIPE_STAGES
    if schedule in SEESAW_VARIANTS:  # one kernel; the chunked one's latent boxes are narrower
        from phase2_mla import mla_decode_gluon_seesaw as sk
        return sk.mla_decode_gluon_seesaw_kernel, sk.SEESAW_BLOCK_N, sk.SEESAW_STAGES
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def schedule_launch(schedule: str) -> tuple[int, int]:
    """(latent TMA boxes per tile, launch num_warps) of a schedule: the seesaw loads each tile's latent as two
    [64, DC / 2] boxes and launches 4 warps (WG0; its warp_specialize worker WG1 adds 4 more: 8 in all); the
    chunked seesaw loads [64, 64] boxes, each on its own barrier, so a score GEMM starts as its first columns land."""
    if schedule in SEESAW_VARIANTS:
        return SEESAW_VARIANTS[schedule][0], 4
    return 1, NUM_WARPS


def seesaw_extra(schedule: str, kv2=None, head_blocks: int = 2) -> dict:
    """The seesaw kernel's launch arguments beyond the serial kernel's (kv_ptr: the cache, for the L2 prefetch;
    L2_AHEAD: SEESAW_VARIANTS, or seesaw_prefetch_rule for the default); {} for the other schedules."""
    if schedule not in SEESAW_VARIANTS:
        return {}
    ahead = SEESAW_VARIANTS[schedule][1]
    return dict(kv_ptr=kv2, L2_AHEAD=seesaw_prefetch_rule(head_blocks) if ahead is None else ahead)


def supported(q_lat: torch.Tensor, kv_cache: torch.Tensor) -> str | None:
    """None when the Gluon kernel can take these inputs, else the reason (the caller falls back to Triton)."""
    if not q_lat.is_cuda or torch.cuda.get_device_capability(q_lat.device)[0] != 9:
        return "needs a Hopper GPU (sm_90)"
    if q_lat.dtype not in (torch.bfloat16, torch.float16):
        return f"needs bf16 / fp16, got {q_lat.dtype}"
    dc, page = q_lat.shape[2], kv_cache.shape[1]
    dr = kv_cache.shape[2] - dc
    if dc != 512 or dr != 64:
        return f"built for DeepSeek-V3's latent 512 + rope 64, got {dc} + {dr}"
    if page % BLOCK_N:
        return f"needs pages of a multiple of {BLOCK_N} tokens, got {page}"
    if not q_lat.is_contiguous() or not kv_cache.is_contiguous():
        return "needs contiguous q_lat and kv_cache"
    return None


def mla_paged_decode_gluon(q_lat, q_pe, kv_cache, block_table, seq_lens, scale: float, num_splits: int = 1,
                           check: bool = True, schedule: str = "serial") -> torch.Tensor:
    """o_lat [B, H, DC] (see the module NOTE). `num_splits` token ranges per sequence, merged by their log-sum-exp
    with the Triton kernel's merge; `schedule` "serial" (this module's kernel), "pipelined" or "seesaw" (the
    overlapped ones, same outputs). Raises ValueError on inputs it cannot take (`supported`) or an unknown schedule."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from phase2_mla.mla_decode import check_args, check_splits, mla_merge_kernel
    check_splits(num_splits)
    kernel, block_n, stages = schedule_kernel(schedule)
    c_boxes, num_warps = schedule_launch(schedule)
    if check:
        check_args(q_lat, q_pe, kv_cache, block_table, seq_lens)
        why = supported(q_lat, kv_cache)
        if why:
            raise ValueError(f"mla_paged_decode_gluon: {why}")
    b, h, dc = q_lat.shape
    dr, page = q_pe.shape[2], kv_cache.shape[1]
    gdt = gl.bfloat16 if q_lat.dtype == torch.bfloat16 else gl.float16
    q_l, qpe_l, c_l, pe_l = _layouts(dc, dr, block_n, gdt, dc // c_boxes)
    q2 = q_lat.reshape(b * h, dc)
    qpe2 = q_pe.reshape(b * h, dr).contiguous()
    kv2 = kv_cache.view(-1, dc + dr)
    q_desc = TensorDescriptor(q2, list(q2.shape), list(q2.stride()), [BLOCK_H, dc], q_l)
    qpe_desc = TensorDescriptor(qpe2, list(qpe2.shape), list(qpe2.stride()), [BLOCK_H, dr], qpe_l)
    c_desc = TensorDescriptor(kv2, list(kv2.shape), list(kv2.stride()), [block_n, dc // c_boxes], c_l)
    pe_desc = TensorDescriptor(kv2, list(kv2.shape), list(kv2.stride()), [block_n, dr], pe_l)
    hb = triton.cdiv(h, BLOCK_H)
    out = torch.empty(b, h, dc, dtype=q_lat.dtype, device=q_lat.device)
    lse = torch.empty(b, h, num_splits, dtype=torch.float32, device=q_lat.device)
    o_part = out.view(b, h, 1, dc) if num_splits == 1 else torch.empty(b, h, num_splits, dc, dtype=torch.float32,
                                                                       device=q_lat.device)
    so = o_part.stride()
    kernel[(hb, num_splits, b)](
        q_desc, qpe_desc, c_desc, pe_desc, block_table, seq_lens, o_part, lse, scale * 1.4426950408889634,
        block_table.stride(0), so[0], so[1], so[2], lse.stride(0), lse.stride(1), h,
        DC=dc, DR=dr, PAGE=page, BLOCK_N=block_n, NUM_SPLITS=num_splits, STAGES=stages, num_warps=num_warps,
        **seesaw_extra(schedule, kv2, hb))
    if num_splits > 1:
        mla_merge_kernel[(b, h)](o_part, lse, out, so[0], so[1], so[2], so[3], lse.stride(0), lse.stride(1),
                                 out.stride(0), out.stride(1), DC=dc, BLOCK_DC=triton.next_power_of_2(dc),
                                 NUM_SPLITS=num_splits, BLOCK_S=triton.next_power_of_2(num_splits), num_warps=4)
    return out


def tile_desc_signature(names, dc: int = 512, dr: int = 64, block_n: int = BLOCK_N, c_cols: int | None = None) -> dict:
    """Compile-time signatures of the four TMA descriptors (q latent, q rope, tile latent, tile rope key) under
    `names`, for compiling a kernel that takes them on a machine without a GPU (c_cols: the latent box's columns,
    default dc)."""
    shapes = ([BLOCK_H, dc], [BLOCK_H, dr], [block_n, c_cols or dc], [block_n, dr])
    return {n: f"tensordesc<bf16[{s[0]}, {s[1]}],{lay!r}>"
            for n, s, lay in zip(names, shapes, _layouts(dc, dr, block_n, c_cols=c_cols))}


def hopper_resources_gluon(page: int = 64, num_splits: int = 1, dc: int = 512, dr: int = 64,
                           schedule: str = "serial") -> dict:
    """Compile a schedule's kernel for sm_90a on any machine (no GPU): registers, spills, shared memory, the PTX's
    wgmma shapes, TMA copies and synchronisation, and `mma_order` (common.ptxas.ptx_mma_order: the
    wgmma / commit / wait / barrier sequence of the loop, where the overlap shows). common/ptxas.py does ptxas."""
    import re

    from common.ptxas import compile_resources, ptx_mma_order, wgmma_shapes
    from triton.experimental.gluon._runtime import GluonASTSource

    kernel, block_n, stages = schedule_kernel(schedule)
    c_boxes, num_warps = schedule_launch(schedule)
    sig = {**tile_desc_signature(("q_desc", "qpe_desc", "c_desc", "pe_desc"), dc, dr, block_n, dc // c_boxes),
           "bt_ptr": "*i32", "lens_ptr": "*i32", "o_ptr": "*bf16" if num_splits == 1 else "*fp32", "lse_ptr": "*fp32",
           "scale_log2": "fp32", "s_bt": "i32", "so_b": "i32", "so_h": "i32", "so_s": "i32", "sl_b": "i32",
           "sl_h": "i32", "H": "i32"}
    consts = dict(DC=dc, DR=dr, PAGE=page, BLOCK_N=block_n, NUM_SPLITS=num_splits, STAGES=stages)
    extra = seesaw_extra(schedule)
    if extra:
        sig["kv_ptr"] = "*bf16"
        consts.update(L2_AHEAD=extra["L2_AHEAD"])
    res = compile_resources(GluonASTSource, kernel, sig, consts, num_warps, 1,
                            divisible=["bt_ptr", "lens_ptr", "o_ptr", "lse_ptr", "s_bt", "so_b", "so_h", "so_s",
                                       "sl_b", "H"] + (["kv_ptr"] if extra else []))
    ptx = res.pop("ptx")
    res.pop("ttgir", None)
    res["wgmma_shapes"] = wgmma_shapes(ptx)
    # {shape: count} of the wgmmas whose A operand comes from registers (the seesaw's own p; none elsewhere)
    reg_a = re.findall(r"wgmma\.mma_async\S*?\.(m64n\d+k\d+)\.\S+\s+\{[^}]*\},\s*\{", ptx)
    res["wgmma_a_in_registers"] = {m: reg_a.count(m) for m in sorted(set(reg_a))}
    res["tma_loads"] = ptx.count("cp.async.bulk.tensor")
    res["l2_prefetches"] = ptx.count("cp.async.bulk.prefetch.L2")
    res["ptx_prefetch_line"] = next((ln.strip() for ln in ptx.splitlines() if "cp.async.bulk.prefetch.L2" in ln), "")
    # the synchronisation the NOTE relies on, as emitted (a CPU test guards it: dropping a fence or a wait fails)
    expect_tx = re.findall(r"mbarrier\.arrive\.expect_tx\S*\s+\S+,\s*\[[^]]+\],\s*(\d+)", ptx)
    res["sync"] = {"mbarrier_waits": ptx.count("mbarrier.try_wait"), "wgmma_waits": ptx.count("wgmma.wait_group"),
                   "async_fences": ptx.count("fence.proxy.async"),
                   "expect_tx_bytes": sorted({int(x) for x in expect_tx}),
                   "wgmma_commits": ptx.count("wgmma.commit_group")}
    res["mma_order"] = ptx_mma_order(ptx)
    return res
