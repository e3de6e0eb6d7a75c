"""The Gluon MLA decode kernel with FlashMLA's "seesaw" schedule: two warpgroups, each computing whole 64 x 64
score tiles of alternate KV tiles, so one warpgroup's softmax runs while the other's wgmmas keep the tensor cores
busy (`mla_paged_decode_gluon(..., schedule="seesaw")`).

Same contract, grid and split-KV ranges as `mla_decode_gluon.mla_decode_gluon_kernel` (read its NOTE first); it
shares split_range, zero_past_end, online_softmax and store_partial with it.

NOTE (why). The serial kernel splits each 64-token score tile between the warpgroups (m64n32k16, A = q from shared
memory: 3 KB of shared memory read per 64 KFLOP wgmma, so the score GEMM is shared-memory-bandwidth bound) and
runs them in lockstep (a cross-warpgroup row max), so no softmax overlaps an MMA. Here warpgroup 0 (WG0) owns the
even tiles of a range and WG1 the odd ones, each computing its tile's FULL score tile (m64n64k16 x 36: 4 KB per
128 KFLOP, balanced) and its softmax alone; the output O [64 heads, 512] stays split by value dims (WG0: O_L =
dims 0..255, WG1: O_R = 256..511, 128 fp32 registers a thread), so both warpgroups use every tile's p: the owner
from registers (wgmma's A operand in registers), the other from shared memory.

NOTE (the algebra; base-2 logits s, running max m_t = max over tokens of tiles 0..t). Both warpgroups hold the same
m after each tile (the owner computes it, the other reads the exact fp32 from shared memory). Invariants after
tile t, for g = 0, 1:  O_g = sum over tokens u of tiles <= t of exp2(s_u - m_t) v_u[half g],
l_g = sum over the tokens of g's OWN tiles <= t of exp2(s_u - m_t).  Tile t, owner w, other w':
    owner:  m_t = max(m_{t-1}, rowmax S_t), P_t = exp2(S_t - m_t) (fp32; bf16 for the GEMMs),
            a_t = exp2(m_{t-1} - m_t), l_w = l_w a_t + rowsum P_t, O_w = O_w a_t + P_t V_t[half w]
    other:  reads m_t, a_t = exp2(m_{t-1} - m_t), l_w' = l_w' a_t, O_w' = O_w' a_t + P_t V_t[half w']
At the end l = l_0 + l_1 (exchanged through shared memory, summed in the same order by both) = sum over all tokens
of exp2(s - m), so O_g / l is exactly the softmax-weighted sum (the same bf16 P_t in both halves, like the serial
kernel's shared p); lse = m + log2 l. m_{t-1} = -inf before tile 0 gives a = 0 on zero state; m_t is finite (every
tile of a range has a token). Unlike FlashMLA (which rescales WG0's P by WG1's factor before sharing it), every P_t
here is final when published: exp2(S_t - m_t) with the running max through tile t, so no P is rescaled.

NOTE (the schedule, one pair = tiles a = 2i (WG0's, slot 0) and b = 2i + 1 (WG1's, slot 1)):
    WG0: wait K_a (two halves) -> S_a (wait) -> softmax_a -> publish P_a, m_a -> O_L = O_L a + P_a V_a,L (regs A)
         -> wait(0), TMA its share of tile a+2 -> wait P_b, m_b -> O_L = O_L a_b + P_b V_b,L (smem A) -> wait(0),
         TMA its share of tile b+2
    WG1: wait K_b -> issue S_b -> wait P_a, m_a -> O_R = O_R a_a + P_a V_a,R (smem A, queued behind S_b) ->
         wait(1) (S_b done) -> softmax_b -> publish P_b, m_b -> wait(0), TMA its share of tile a+2 ->
         O_R = O_R a_b + P_b V_b,R (regs A) -> wait(0), TMA its share of tile b+2
so S_b runs during WG0's softmax_a, and both P_a V_a GEMMs during WG1's softmax_b. Nothing is in flight across the
loop's back edge (ptxas serialises every wgmma when a group crosses it: C7514, see the pipelined NOTE; FlashMLA's
source says the same of nvcc). An odd last tile (WG0's) runs after the loop: WG0 its whole part, WG1 only
O_R += P_a V_a,R. A partial last tile (WG0's or WG1's): its owner zeroes the latent rows past the end in both
halves before its score wgmmas read them (zero_past_end), so before it publishes P; the other warpgroup reads the
tile only after that (through the P barrier); masked scores give P = 0 there.

NOTE (shared memory, 222 KB of 227): q 64 x 512 + q_pe 64 x 64 (72 KB); two KV slots (the current pair), each the
latent as two [64, 256] halves + the rope key [64, 64] (72 KB each); per slot an fp32 row max m_t (256 B); the two
warpgroups' l (512 B); mbarriers. P_t needs no buffer of its own: it is written over tile t's rope key, which only
the owner's score GEMM reads (retired before the softmax) -- same shape [64, 64], same 128-byte swizzle. So the
other warpgroup reads P_t from slot t % 2's rope region.

NOTE (barriers, all mbarriers: the warpgroups are Gluon warp_specialize partitions, which share nothing but shared
memory). kv[2s + g] (count 1, TMA bytes): WG g's share of slot s. A slot's latent half h is read by the owner's
score GEMM and by WG h's value GEMM; its rope region (rope key, then P) by the owner's score GEMM and the OTHER
warpgroup's value GEMM (P from shared memory). So WG g refills, right after its own value GEMM on the slot's tile
retired, latent half g plus, where it is the P reader (slot 1 - g), the rope key; the owner's score GEMM retired
before it published P, which WG g waited for. No "slot free" barrier is needed and TMA loads overlap the pair's
second half. ready[s] (count 1): P_t and m_t of slot s published (stores, fence.proxy.async, partition barrier,
one arrive); phase (t // 2) & 1. WAR on ready / m / P: the owner of tile t + 2 publishes again only after waiting
the other's P_{t+1}, which that warpgroup published after reading P_t / m_t. l_bar (count 2): both l written.
A value GEMM over the OTHER warpgroup's share (V_a,R in WG1, V_b,L in WG0) first waits that share's kv barrier
itself (already complete: its owner waited it before publishing P), so the TMA data's visibility does not rest on
a chain through the owner's arrive; the reader re-arms that barrier only after its read, so the wait is safe.

NOTE (sm_90a, compiled on the CPU: `hopper_resources_gluon(schedule="seesaw")`, pinned by a CPU test): 255 registers
(both partitions setmaxnreg 256: 2 x 128 threads x 256 = the whole register file, one CTA per SM as before), no
spills, 222,540 B of shared memory, per warpgroup m64n64k16 score wgmmas and m64n256k16 value wgmmas (3 of the 6
value-GEMM sites with A in registers), no ptxas wgmma serialisation. WG1 holds O (128) + S_b (32) while P_a V_a
runs, so registers are tight: with the slot indices compile-time constants, ptxas hoisted all the score GEMM's
wgmma descriptors out of the loop and spilled 164 bytes; `_opaque_zero` makes them loop-variant (0 spills).
Speed is measured on the GPU only (`bench_mla --only mla`).

NOTE (chunks: schedule "seesaw_chunked"). With a [64, 64] latent box on c_desc, each half is CH = 4 boxes, each on
its own barrier kv[(2 slot + half) CH + j] (the rope key rides on the loading warpgroup's last box), and the score
GEMM waits box by box (FlashMLA's order: QK^T starts as the first 64 columns land). Measured on the H100 (2026-12-06,
results/bench_mla_s1206b_h100.json): 145.4 us against the two-box seesaw's 136.2 at 128 heads, so the default loads
halves (CH = 1: the same TMA / wait / wgmma counts as before the option existed, and the same time, 136.2 us).

NOTE (L2 prefetch: L2_AHEAD). With L2_AHEAD = k > 0 each warpgroup, when it issues its TMA share of tile t, asks
the L2 for its half of the rows of tile t + k (_l2_prefetch: one 36 KB bulk prefetch from one thread). Measured on
the H100 (results/ab_seesaw_s1209d_h100.json): k = 1 134.8 vs 136.8 us at 128 heads; at 16 heads it helps with 64
programs (116.6 vs 124.6) and hurts with 128 streaming distinct latents near the copy ceiling (112.9 vs 109.4), so
the wrapper's default takes k = 1 only with two or more head blocks (mla_decode_gluon.seesaw_prefetch_rule).

Not done (next steps if the GPU says so): the slot of tile b is refilled only at the end of its pair
(both value GEMMs read it), so WG1's next score GEMM sees that load's latency (FlashMLA's has the same; the L2
prefetch shortens the DRAM part of it only); q's rope part in registers (FlashMLA) would free 8 KB. But at DeepSeek-V3's
128 heads / B=64 the H100 runs this kernel at its 700 W board limit with the SM clock held near 1.6 GHz
(phase2_mla/contention_mla.py, results/contention_mla_s1210f_h100.json): ~3,340 SM clocks a tile with 32 programs,
~3,450-3,600 with 128, so there a schedule that only stalls less mostly buys a lower clock; the lever is energy per
tile (each latent crosses from the L2 into shared memory once per head block: a TMA multicast to a two-CTA cluster
would halve that, and Gluon 3.6 has no multicast copy).
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from phase2_mla.mla_decode_gluon import online_softmax, split_range, store_partial, zero_past_end

SEESAW_BLOCK_N = 64  # tokens per tile (one page of 64; a page of 128 is two tiles)
SEESAW_STAGES = 2  # KV slots: the current pair's two tiles
WG1_REGS = gl.constexpr(256)  # setmaxnreg of the worker partition (WG1)
PF_BYTES = gl.constexpr(36864)  # one L2 prefetch: half a 64-token tile of 1,152-byte rows
PF_ASM = gl.constexpr("{ .reg .pred p; setp.ne.b32 p, $2, 0; "
                      f"@p cp.async.bulk.prefetch.L2.global [$1], {PF_BYTES.value}; mov.u32 $0, 0; }}")


@gluon.constexpr_function
def _wg_layout(n):
    """Accumulator layout of one warpgroup's m64 x n wgmma."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, n, 16])


@gluon.jit
def _chunk(c_half, j: gl.constexpr, CW: gl.constexpr):
    """Columns [j CW, j CW + CW) of a latent half in shared memory (the whole half when CW spans it)."""
    if CW == c_half.shape[1]:
        return c_half
    else:
        return c_half.slice(j * CW, CW, dim=1)


@gluon.jit
def _l2_prefetch(kv_ptr, bt_row, n0, end, G: gl.constexpr, BLOCK_N: gl.constexpr, ROW: gl.constexpr, PAGE):
    """Ask the L2 for rows [G BLOCK_N / 2, (G + 1) BLOCK_N / 2) of the tile at token n0 (whole cache rows: latent
    and rope key, contiguous within a page) if n0 < end: one `cp.async.bulk.prefetch.L2` of PF_BYTES, issued by the
    partition's first thread. Nothing waits for it; the TMA load of that tile a pair later then finds its lines in
    the L2 instead of DRAM (SEESAW_VARIANTS). (As first written, every one of the 128 threads issued a 288-byte
    prefetch: 174.5 vs 136.4 us at 128 heads on the H100, results/ab_seesaw_s1209_h100.json.)"""
    gl.static_assert((BLOCK_N // 2) * ROW * 2 == PF_BYTES, "PF_ASM's byte count is half a tile")
    lay: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    offs = gl.arange(0, 128, layout=lay)
    pred = n0 < end
    page = gl.load(bt_row + n0 // PAGE, mask=pred, other=0)
    row = (page * PAGE + n0 % PAGE + G * (BLOCK_N // 2)).to(gl.int64)
    ptrs = kv_ptr + row * ROW + offs * 0
    gl.inline_asm_elementwise(PF_ASM, "=r,l,r", [ptrs, ((offs == 0) & pred).to(gl.int32)], dtype=gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def _load_share(c_desc, pe_desc, bt_row, kv_bar, c_smem, pe_smem, n0, slot: gl.constexpr, G: gl.constexpr, pred,
                PAGE, kv_ptr, end, L2_AHEAD: gl.constexpr):
    """WG G's share of the tile at token n0 into `slot` (if pred): latent half G, as CH = (DC / 2) / c_desc's box
    columns TMA boxes, box j on barrier kv[(2 slot + G) CH + j], and the rope key where WG G is the one that reads
    that slot's P (slot != G), on the half's last barrier. With L2_AHEAD = k > 0, also WG G's half of the rows of
    the tile k tiles later into the L2 (_l2_prefetch)."""
    if L2_AHEAD > 0:
        _l2_prefetch(kv_ptr, bt_row, n0 + L2_AHEAD * c_smem.shape[1], end, G, c_smem.shape[1],
                     2 * c_smem.shape[2] + pe_smem.shape[2], PAGE)
    DCH: gl.constexpr = c_smem.shape[2]
    CW: gl.constexpr = c_desc.block_type.shape[1]
    CH: gl.constexpr = DCH // CW
    DC: gl.constexpr = 2 * DCH
    page = gl.load(bt_row + n0 // PAGE, mask=pred, other=0)
    r = page * PAGE + n0 % PAGE
    for j in gl.static_range(CH):
        bar = kv_bar.index((2 * slot + G) * CH + j)
        if (slot != G) and (j == CH - 1):
            mbarrier.expect(bar, c_desc.block_type.nbytes + pe_desc.block_type.nbytes, pred=pred)
            tma.async_copy_global_to_shared(pe_desc, [r, DC], bar, pe_smem.index(slot), pred=pred)
        else:
            mbarrier.expect(bar, c_desc.block_type.nbytes, pred=pred)
        tma.async_copy_global_to_shared(c_desc, [r, G * DCH + j * CW], bar,
                                        _chunk(c_smem.index(2 * slot + G), j, CW), pred=pred)


@gluon.jit
def _wait_share(kv_bar, c_smem, slot: gl.constexpr, G: gl.constexpr, phase):
    """Wait until WG G's share of `slot` (all CH barriers of latent half G) has landed."""
    CH: gl.constexpr = kv_bar.shape[0] // c_smem.shape[0]
    for j in gl.static_range(CH):
        mbarrier.wait(kv_bar.index((2 * slot + G) * CH + j), phase=phase)


@gluon.jit
def _own_scores(q_smem, qpe_smem, c_smem, pe_smem, kv_bar, slot: gl.constexpr, phase, n0, end, s_zero, z):
    """Issue S = q . [c | k_pe]^T of the tile in `slot` (2 CH + 1 commit groups): each CW-column box of the latent
    (CH a half) as soon as it landed, in order, then the rope key; a partial tile's rows past `end` zeroed in each
    box before a wgmma reads it. z: 0 at run time, opaque to the compiler (see _opaque_zero). (Slot 1's halves in
    the other order -- WG1's own half, refilled by WG1, first -- measured slower: 140.1 vs 136.4 us at 128 heads on
    the H100, results/ab_seesaw_s1209_h100.json: WG0's half of that slot lands first.)"""
    DCH: gl.constexpr = c_smem.shape[2]
    CH: gl.constexpr = kv_bar.shape[0] // c_smem.shape[0]  # barriers (boxes) per latent half
    CW: gl.constexpr = DCH // CH
    q = q_smem.index(z)
    s = s_zero
    for j in gl.static_range(2 * CH):
        mbarrier.wait(kv_bar.index(2 * slot * CH + j), phase=phase)
        cj = _chunk(c_smem.index(2 * slot + j // CH + z), j % CH, CW)  # box j % CH of half j // CH
        zero_past_end(cj, n0, end)
        s = warpgroup_mma(q.slice(j * CW, CW, dim=1), cj.permute((1, 0)), s, use_acc=j > 0, is_async=True)
    return warpgroup_mma(qpe_smem.index(z), pe_smem.index(slot + z).permute((1, 0)), s, is_async=True)


@gluon.jit
def _opaque_zero(n0):
    """0 (n0 >= 0: a token index), which the compiler cannot prove: indexing the slots with slot + _opaque_zero(n0)
    makes their wgmma descriptors loop-variant, so ptxas forms them per iteration instead of hoisting all 36 of a
    score GEMM out of the loop and spilling them (a constant slot did: 164 bytes spilled at 255 registers)."""
    return n0 >> 31


@gluon.jit
def _publish(p16, m_new, p_dst, m_dst, bar):
    """P_t (bf16, over the slot's rope key) and m_t to shared memory, visible to the other warpgroup's wgmma and
    loads once it waits `bar`: every thread's stores and async-proxy fence, then a partition barrier, one arrive."""
    p_dst.store(p16)
    m_dst.store(m_new)
    fence_async_shared()
    gl.thread_barrier()
    mbarrier.arrive(bar)


@gluon.jit
def _take(m_i, l_i, acc, m_smem, bar, phase):
    """The other warpgroup's tile: wait its P / m, rescale this warpgroup's l (own tokens only) and O half."""
    mbarrier.wait(bar, phase=phase)
    m_t = m_smem.load(m_i.type.layout)
    a = gl.exp2(m_i - m_t)
    acc = acc * gl.convert_layout(a, gl.SliceLayout(1, acc.type.layout))[:, None]
    return m_t, l_i * a, acc


@gluon.jit
def _wg0_own_tile(q_smem, qpe_smem, c_smem, pe_smem, m_smem, kv_bar, ready_bar, m_i, l_i, acc, s_zero, n0, end,
                  phase, scale_log2):
    """WG0's tile in slot 0: scores, softmax, publish, O_L = O_L a + P V_L (P from registers); waited (wait(0))."""
    dtype: gl.constexpr = q_smem.dtype
    BH: gl.constexpr = q_smem.shape[1]
    z = _opaque_zero(n0)
    s = _own_scores(q_smem, qpe_smem, c_smem, pe_smem, kv_bar, 0, phase, n0, end, s_zero, z)
    s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
    p, alpha, m_i, l_i = online_softmax(s, m_i, l_i, n0, end, scale_log2)
    p16 = p.to(dtype)
    _publish(p16, m_i, pe_smem.index(0), m_smem.slice(0 * BH, BH), ready_bar.index(0))
    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, acc.type.layout))[:, None]
    p_op = gl.convert_layout(p16, gl.DotOperandLayout(operand_index=0, parent=acc.type.layout, k_width=2))
    acc = warpgroup_mma(p_op, c_smem.index(0 + z), acc, is_async=True)
    acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_op))
    return m_i, l_i, acc


@gluon.jit
def _wg_start(q_smem, c_smem, q_bar):
    """A warpgroup's zero state (running max -inf, row sums 0, its O half 0, the score GEMM's zero accumulator),
    then the wait for q."""
    BH: gl.constexpr = q_smem.shape[1]
    BLOCK_N: gl.constexpr = c_smem.shape[1]
    DC: gl.constexpr = 2 * c_smem.shape[2]
    s_layout: gl.constexpr = _wg_layout(BLOCK_N)
    m_i = gl.full([BH], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([BH], gl.float32, layout=gl.SliceLayout(1, s_layout))
    acc = gl.zeros([BH, DC // 2], gl.float32, layout=_wg_layout(DC // 2))
    s_zero = gl.zeros([BH, BLOCK_N], gl.float32, layout=s_layout)
    mbarrier.wait(q_bar, phase=0)
    return m_i, l_i, acc, s_zero


@gluon.jit
def _seesaw_wg0(q_smem, qpe_smem, c_smem, pe_smem, m_smem, l_smem, q_bar, kv_bar, ready_bar, l_bar, c_desc, pe_desc,
                bt_row, start, end, n_tiles, scale_log2, o_ptr, lse_ptr, b, hb, split, so_b, so_h, so_s, sl_b, sl_h,
                H, PAGE, kv_ptr, flags):
    """WG0 (the default partition): even tiles, value dims 0 .. DC / 2 - 1 (see the NOTE)."""
    L2_AHEAD: gl.constexpr = _log2(flags.shape[0])  # constexprs reach a partition only as shapes (see _flags)
    BH: gl.constexpr = q_smem.shape[1]
    BLOCK_N: gl.constexpr = c_smem.shape[1]
    m_i, l_i, acc, s_zero = _wg_start(q_smem, c_smem, q_bar)
    for i in range(n_tiles // 2):
        n0 = start + 2 * i * BLOCK_N
        m_i, l_i, acc = _wg0_own_tile(q_smem, qpe_smem, c_smem, pe_smem, m_smem, kv_bar, ready_bar, m_i, l_i, acc,
                                      s_zero, n0, end, i & 1, scale_log2)
        # slot 0: latent half 0 of tile a + 2 (WG1 loads the rest: its half and the rope key / P_a region)
        _load_share(c_desc, pe_desc, bt_row, kv_bar, c_smem, pe_smem, n0 + 2 * BLOCK_N, 0, 0,
                    2 * i + 2 < n_tiles, PAGE, kv_ptr, end, L2_AHEAD)
        # tile b (WG1's): O_L = O_L a_b + P_b V_b,L with P_b from slot 1's rope region
        m_i, l_i, acc = _take(m_i, l_i, acc, m_smem.slice(1 * BH, BH), ready_bar.index(1), i & 1)
        _wait_share(kv_bar, c_smem, 1, 0, i & 1)  # V_b,L landed: this warpgroup's own view of the TMA (the NOTE)
        z = _opaque_zero(n0)
        acc = warpgroup_mma(pe_smem.index(1 + z), c_smem.index(2 + z), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        # slot 1: latent half 0 and the rope key (WG0 is the reader of P_b) of tile b + 2
        _load_share(c_desc, pe_desc, bt_row, kv_bar, c_smem, pe_smem, n0 + 3 * BLOCK_N, 1, 0,
                    2 * i + 3 < n_tiles, PAGE, kv_ptr, end, L2_AHEAD)
    if n_tiles % 2 == 1:  # the odd last tile is WG0's
        m_i, l_i, acc = _wg0_own_tile(q_smem, qpe_smem, c_smem, pe_smem, m_smem, kv_bar, ready_bar, m_i, l_i, acc,
                                      s_zero, start + (n_tiles - 1) * BLOCK_N, end, (n_tiles // 2) & 1, scale_log2)
    _finish(acc, m_i, l_i, l_smem, l_bar, 0, o_ptr, lse_ptr, b, hb, split, so_b, so_h, so_s, sl_b, sl_h, H)


@gluon.jit
def _seesaw_wg1(q_smem, qpe_smem, c_smem, pe_smem, m_smem, l_smem, q_bar, kv_bar, ready_bar, l_bar, c_desc, pe_desc,
                bt_row, start, end, n_tiles, scale_log2, o_ptr, lse_ptr, b, hb, split, so_b, so_h, so_s, sl_b, sl_h,
                H, PAGE, kv_ptr, flags):
    """WG1 (the worker partition): odd tiles, value dims DC / 2 .. DC - 1 (see the NOTE)."""
    L2_AHEAD: gl.constexpr = _log2(flags.shape[0])  # constexprs reach a partition only as shapes (see _flags)
    BH: gl.constexpr = q_smem.shape[1]
    BLOCK_N: gl.constexpr = c_smem.shape[1]
    dtype: gl.constexpr = q_smem.dtype
    m_i, l_i, acc, s_zero = _wg_start(q_smem, c_smem, q_bar)
    o_layout: gl.constexpr = acc.type.layout
    for i in range(n_tiles // 2):
        n0 = start + (2 * i + 1) * BLOCK_N  # tile b
        # S_b on the tensor cores while WG0 does softmax_a
        z = _opaque_zero(n0)
        s = _own_scores(q_smem, qpe_smem, c_smem, pe_smem, kv_bar, 1, i & 1, n0, end, s_zero, z)
        # tile a (WG0's): O_R = O_R a_a + P_a V_a,R, P_a from slot 0's rope region, queued behind S_b
        m_i, l_i, acc = _take(m_i, l_i, acc, m_smem.slice(0 * BH, BH), ready_bar.index(0), i & 1)
        _wait_share(kv_bar, c_smem, 0, 1, i & 1)  # V_a,R landed (as in WG0)
        acc = warpgroup_mma(pe_smem.index(0 + z), c_smem.index(1 + z), acc, is_async=True)
        s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))  # S_b retired; P_a V_a,R may still run
        p, alpha, m_i, l_i = online_softmax(s, m_i, l_i, n0, end, scale_log2)
        p16 = p.to(dtype)
        _publish(p16, m_i, pe_smem.index(1), m_smem.slice(1 * BH, BH), ready_bar.index(1))
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        # slot 0: latent half 1 and the rope key (WG1 read P_a there) of tile a + 2
        _load_share(c_desc, pe_desc, bt_row, kv_bar, c_smem, pe_smem, n0 + BLOCK_N, 0, 1, 2 * i + 2 < n_tiles,
                    PAGE, kv_ptr, end, L2_AHEAD)
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
        p_op = gl.convert_layout(p16, gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2))
        acc = warpgroup_mma(p_op, c_smem.index(3 + z), acc, is_async=True)
        acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_op))
        # slot 1: latent half 1 of tile b + 2 (WG0 loads half 0 and the rope key / P_b region)
        _load_share(c_desc, pe_desc, bt_row, kv_bar, c_smem, pe_smem, n0 + 2 * BLOCK_N, 1, 1, 2 * i + 3 < n_tiles,
                    PAGE, kv_ptr, end, L2_AHEAD)
    if n_tiles % 2 == 1:  # WG0's odd last tile: only O_R += P_a V_a,R here
        m_i, l_i, acc = _take(m_i, l_i, acc, m_smem.slice(0 * BH, BH), ready_bar.index(0), (n_tiles // 2) & 1)
        _wait_share(kv_bar, c_smem, 0, 1, (n_tiles // 2) & 1)
        acc = warpgroup_mma(pe_smem.index(0), c_smem.index(1), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    _finish(acc, m_i, l_i, l_smem, l_bar, 1, o_ptr, lse_ptr, b, hb, split, so_b, so_h, so_s, sl_b, sl_h, H)


@gluon.jit
def _flags(L2_AHEAD: gl.constexpr):
    """A [2 ** L2_AHEAD] tensor carrying the prefetch distance into the partitions: warp_specialize passes its
    arguments through IR values, so a constexpr arrives there as a run-time scalar, but a shape survives."""
    return gl.zeros([2 ** L2_AHEAD], gl.int32, gl.BlockedLayout([1], [32], [4], [0]))


@gluon.constexpr_function
def _log2(n):
    """log2 of a power of two (_flags' first dimension)."""
    return int(n).bit_length() - 1


@gluon.jit
def _finish(acc, m_i, l_i, l_smem, l_bar, G: gl.constexpr, o_ptr, lse_ptr, b, hb, split, so_b, so_h, so_s, sl_b,
            sl_h, H):
    """l = l_0 + l_1 (both warpgroups sum the same two values in the same order), then this warpgroup's O half
    and the (identical, written twice) lse."""
    BH: gl.constexpr = acc.shape[0]
    l_smem.slice(G * BH, BH).store(l_i)
    gl.thread_barrier()
    mbarrier.arrive(l_bar)
    mbarrier.wait(l_bar, phase=0)
    l_tot = l_smem.slice(0 * BH, BH).load(l_i.type.layout) + l_smem.slice(1 * BH, BH).load(l_i.type.layout)
    store_partial(acc, m_i, l_tot, o_ptr + G * acc.shape[1], lse_ptr, b, hb, split, so_b, so_h, so_s, sl_b, sl_h, H)


@gluon.jit
def mla_decode_gluon_seesaw_kernel(q_desc, qpe_desc, c_desc, pe_desc, bt_ptr, lens_ptr, o_ptr, lse_ptr, scale_log2,
                                   s_bt, so_b, so_h, so_s, sl_b, sl_h, H, kv_ptr,
                                   DC: gl.constexpr, DR: gl.constexpr, PAGE: gl.constexpr, BLOCK_N: gl.constexpr,
                                   NUM_SPLITS: gl.constexpr, STAGES: gl.constexpr, L2_AHEAD: gl.constexpr):
    """The serial kernel's arguments and grid, plus kv_ptr (the contiguous cache, for the L2 prefetch); launched
    with 4 warps (WG0, the default partition) + a 4-warp worker (WG1); c_desc's box is [BLOCK_N, DC / 2] (a latent
    half) or, for the chunked schedule, a divisor of it. L2_AHEAD: the L2 prefetch's distance in tiles (0: none). See
    the NOTE."""
    gl.static_assert(STAGES == 2, "the seesaw's ring is the current pair of tiles")
    CH: gl.constexpr = (DC // 2) // c_desc.block_type.shape[1]  # latent boxes (and barriers) per half
    gl.static_assert(CH * c_desc.block_type.shape[1] * 2 == DC, "c_desc's box divides a latent half")
    BH: gl.constexpr = q_desc.block_type.shape[0]
    dtype: gl.constexpr = q_desc.dtype

    hb = gl.program_id(0)
    split = gl.program_id(1)
    b = gl.program_id(2)
    start, end, n_tiles = split_range(lens_ptr, b, split, NUM_SPLITS, BLOCK_N)

    q_smem = gl.allocate_shared_memory(dtype, [1, BH, DC], q_desc.layout)  # [1, ...]: see _opaque_zero
    qpe_smem = gl.allocate_shared_memory(dtype, [1, BH, DR], qpe_desc.layout)
    c_smem = gl.allocate_shared_memory(dtype, [2 * STAGES, BLOCK_N, DC // 2], c_desc.layout)  # [2 slot + half]
    pe_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, DR], pe_desc.layout)  # rope key, then P
    vec_layout: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    m_smem = gl.allocate_shared_memory(gl.float32, [STAGES * BH], vec_layout)  # m_t of slot s: [s BH, s BH + BH)
    l_smem = gl.allocate_shared_memory(gl.float32, [2 * BH], vec_layout)  # l_g: [g BH, g BH + BH)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    kv_bar = gl.allocate_shared_memory(gl.int64, [2 * STAGES * CH, 1], mbarrier.MBarrierLayout())
    ready_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    l_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(2 * STAGES * CH):
        mbarrier.init(kv_bar.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(ready_bar.index(i), count=1)
    mbarrier.init(l_bar, count=2)
    fence_async_shared()  # the barriers' initialisation is visible to the TMA unit
    mbarrier.expect(q_bar, q_desc.block_type.nbytes + qpe_desc.block_type.nbytes)
    q_row = b * H + hb * BH
    tma.async_copy_global_to_shared(q_desc, [q_row, 0], q_bar, q_smem.index(0))
    tma.async_copy_global_to_shared(qpe_desc, [q_row, 0], q_bar, qpe_smem.index(0))
    bt_row = bt_ptr + b * s_bt
    for t in gl.static_range(STAGES):  # tiles 0 and 1, both shares each
        for g in gl.static_range(2):
            _load_share(c_desc, pe_desc, bt_row, kv_bar, c_smem, pe_smem, start + t * BLOCK_N, t, g, t < n_tiles,
                        PAGE, kv_ptr, end, L2_AHEAD)

    args = (q_smem, qpe_smem, c_smem, pe_smem, m_smem, l_smem, q_bar, kv_bar, ready_bar, l_bar, c_desc, pe_desc,
            bt_row, start, end, n_tiles, scale_log2, o_ptr, lse_ptr, b, hb, split, so_b, so_h, so_s, sl_b, sl_h, H,
            PAGE, kv_ptr, _flags(L2_AHEAD))
    gl.warp_specialize([(_seesaw_wg0, args), (_seesaw_wg1, args)], [4], [WG1_REGS])

    mbarrier.invalidate(q_bar)
    for i in gl.static_range(2 * STAGES * CH):
        mbarrier.invalidate(kv_bar.index(i))
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(ready_bar.index(i))
    mbarrier.invalidate(l_bar)
