"""The Gluon MLA decode kernel with a software-pipelined schedule: tile t + 1's score wgmma runs on the tensor cores
while the CUDA cores do tile t's softmax (`mla_paged_decode_gluon(..., schedule="pipelined")`).

Same contract, launch, warpgroup split and split-KV ranges as `mla_decode_gluon.mla_decode_gluon_kernel` (read its
NOTE first); the two kernels share the tile load / wait / zeroing, the online softmax and the output store
(mla_decode_gluon.py). Only the loop order and the buffer sizes differ.

NOTE (the schedule). The serial kernel runs each tile as wait TMA -> S = q . K^T (wait) -> softmax -> p to shared
memory -> fence + CTA barrier -> O += p . C (wait): the tensor cores idle during the softmax, the p store, the
barriers and the TMA issue. Here iteration t, entered with S_t in registers and nothing in flight, does

    (a) wait tile t+1's TMA; issue S_{t+1} (two async wgmmas, latent then rope: 2 commit groups)
    (b) softmax(S_t) -> p_t, alpha_t                                  [tensor cores: S_{t+1}]
    (c) p_t -> p_smem[t % 2]; fence; CTA barrier; TMA tile t+3 into slot (t+3) % 4 = (t-1) % 4   [still S_{t+1}]
    (d) acc *= alpha_t; issue O_t += p_t . C_t (1 group, queued behind S_{t+1})
    (e) wgmma wait(0): S_{t+1} and O_t retired

so the softmax, the p hand-off between the warpgroups (each writes its 16 token columns of p, each reads all 32)
and the TMA issue of tile t run while the tensor cores compute tile t+1's scores. The PTX shows it
(`common.ptxas.ptx_mma_order`, pinned by a CPU test): per loop iteration "wgmma m64n16k16 x32, commit, x4,
commit" (S_{t+1}), then the softmax's ex2s, the p fence and barriers and the TMA refill, then "wgmma m64n256k16 x2,
commit" (O_t), then the only "wait 0". The last iteration's S_{t+1} reads a slot no TMA writes (its mbarrier
wait is predicated off) and is discarded: one extra score tile per range instead of a peeled epilogue.

Why not deeper (FlashAttention-3's form, O_t left in flight into the next iteration's softmax, retired there by
wait(2) behind S_{t+2}): compiled, ptxas reports C7514 "wgmma.mma_async instructions are serialized due to non
wgmma instructions reading accumulator registers" -- it cannot follow a wgmma group across the loop's back edge,
and serialises every wgmma, which would undo the overlap. So nothing is in flight at the back edge here; the
resource report carries ptxas's serialisation notes (`wgmma_serialized`, empty, and tested).

Ring WAR hazards: slot (t-1) % 4 was last read by O_{t-1} and S_{t-1}, both retired by every warpgroup's wait(0)
that ended iteration t-1, before the barrier in (c); p_smem[t % 2] was last read by O_{t-2} (two buffers because a
warpgroup may still be waiting for O_{t-1}, which reads p_{t-1}, while the other writes p_t).

Shared memory (the constraint that shapes it): a tile is in use from S_t's issue to O_t's completion, so tiles t and
t+1 are both live while the next ones load; with q (72 KB) resident, even 3 slots of 64-token tiles (72 KB each)
would need 72 + 3 x 72 > 227 KB. So tiles are 32 tokens (36 KB: 32 KB latent + 4 KB rope key) in a 4-slot ring:
2 live, 2 loading (a tile's TMA is issued ~2 iterations before its wait), and p is double-buffered:
72 + 4 x 36 + 2 x 4 = 224 KB, the serial kernel's footprint. Registers: acc (64 x 256 fp32 = 128 a thread), S_t and
S_{t+1} (64 x 16 fp32 each = 8 a thread): 197 registers, no spills. Split ranges stay multiples of 64 tokens
(SPLIT_ALIGN): the same partial (o, lse) per split as the serial kernel, merged by the same kernel.

Cost of the 32-token tile: each warpgroup's score wgmma is m64n16k16 (16 of the 32 columns), which reads the same
2 KB q slice from shared memory per 16 x 16 x 64 MMA as the serial kernel's m64n32k16 does for twice the work; if
the score GEMM is shared-memory-bandwidth bound on the GPU, that is what the pipelined schedule gives back (the
next step would be q_pe / part of q in registers, or a K-split of the score GEMM). Measured on the GPU only
(`bench_mla --only mla` times both schedules).
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, warpgroup_mma,
                                                              warpgroup_mma_wait)

from phase2_mla.mla_decode_gluon import (allocate_and_load_q, load_tile, online_softmax, score_mma,
                                         split_columns_layout, split_range, store_partial, wait_tile)

PIPE_BLOCK_N = 32  # tokens per tile (a page of 64 is two tiles)
PIPE_STAGES = 4  # ring slots: tiles t and t + 1 in use, t + 2 and t + 3 loading


@gluon.jit
def mla_decode_gluon_pipelined_kernel(q_desc, qpe_desc, c_desc, pe_desc, bt_ptr, lens_ptr, o_ptr, lse_ptr,
                                      scale_log2, s_bt, so_b, so_h, so_s, sl_b, sl_h, H,
                                      DC: gl.constexpr, DR: gl.constexpr, PAGE: gl.constexpr,
                                      BLOCK_N: gl.constexpr, NUM_SPLITS: gl.constexpr, STAGES: gl.constexpr):
    """The serial kernel's arguments and grid; BLOCK_N 32 and STAGES 4 (see the NOTE)."""
    gl.static_assert(STAGES >= 3, "tiles t and t + 1 are live while tile t + STAGES - 1 loads")
    BH: gl.constexpr = q_desc.block_type.shape[0]
    dtype: gl.constexpr = q_desc.dtype
    s_layout: gl.constexpr = split_columns_layout(BLOCK_N)  # warpgroup g: token columns [16g, 16g + 16)
    o_layout: gl.constexpr = split_columns_layout(DC)  # warpgroup g: value dims [256g, 256g + 256)

    hb = gl.program_id(0)
    split = gl.program_id(1)
    b = gl.program_id(2)
    start, end, n_tiles = split_range(lens_ptr, b, split, NUM_SPLITS, BLOCK_N)

    q_smem, qpe_smem, c_smem, pe_smem, p_smem, q_bar, kv_bar = allocate_and_load_q(
        q_desc, qpe_desc, c_desc, pe_desc, b * H + hb * BH, STAGES, BLOCK_N, 2)
    bt_row = bt_ptr + b * s_bt
    for i in gl.static_range(STAGES - 1):  # tiles 0 .. STAGES - 2 -> their slots (predicated off past the range)
        load_tile(c_desc, pe_desc, bt_row, kv_bar, c_smem, pe_smem, start + i * BLOCK_N, i, i < n_tiles, PAGE)

    m_i = gl.full([BH], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([BH], gl.float32, layout=gl.SliceLayout(1, s_layout))
    acc = gl.zeros([BH, DC], gl.float32, layout=o_layout)
    s_zero = gl.zeros([BH, BLOCK_N], gl.float32, layout=s_layout)
    mbarrier.wait(q_bar, phase=0)

    # S_0 (for an empty range: computed from a slot nobody loaded, never used)
    c0 = wait_tile(kv_bar, c_smem, 0, start, end, n_tiles > 0, STAGES)
    s = score_mma(q_smem, qpe_smem, c0, pe_smem.index(0), s_zero)
    s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))

    for t in range(n_tiles):
        n0 = start + t * BLOCK_N
        # (a) S_{t+1} on the tensor cores while the CUDA cores do (b) and (c)
        c_next = wait_tile(kv_bar, c_smem, t + 1, n0 + BLOCK_N, end, t + 1 < n_tiles, STAGES)
        s_next = score_mma(q_smem, qpe_smem, c_next, pe_smem.index((t + 1) % STAGES), s_zero)
        # (b) softmax of tile t
        p, alpha, m_i, l_i = online_softmax(s, m_i, l_i, n0, end, scale_log2)
        # (c) p_t into the buffer O_{t-2} read; the barrier also means every warpgroup retired O_{t-1} (its wait(0)
        # ended iteration t - 1), so slot (t - 1) % STAGES takes tile t + STAGES - 1
        p_buf = p_smem.index(t % 2)
        p_buf.store(p.to(dtype))
        fence_async_shared()  # p's generic-proxy writes before the wgmma (async proxy) reads them
        gl.thread_barrier()
        load_tile(c_desc, pe_desc, bt_row, kv_bar, c_smem, pe_smem, n0 + (STAGES - 1) * BLOCK_N,
                  (t + STAGES - 1) % STAGES, t + STAGES - 1 < n_tiles, PAGE)
        # (d) O_t, queued behind S_{t+1}
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
        acc = warpgroup_mma(p_buf, c_smem.index(t % STAGES), acc, is_async=True)
        # (e) both retired: nothing is in flight across the loop's back edge (see the NOTE: ptxas serialises)
        s, acc = warpgroup_mma_wait(num_outstanding=0, deps=(s_next, acc))

    mbarrier.invalidate(q_bar)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(kv_bar.index(i))
    store_partial(acc, m_i, l_i, o_ptr, lse_ptr, b, hb, split, so_b, so_h, so_s, sl_b, sl_h, H)
