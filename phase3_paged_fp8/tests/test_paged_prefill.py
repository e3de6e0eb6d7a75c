"""Paged prefill: varlen batches with cached prefixes, causal, K/V written into shuffled blocks on the way."""
import pytest
import torch

from phase3_paged_fp8.cache_write import FP8
from phase3_paged_fp8.paged_prefill import paged_prefill, paged_prefill_ref, slot_mapping_for
from phase3_paged_fp8.tests.helpers import DEVICE, naive_paged_attention, random_block_tables, random_cache

IMPLS = {"triton": paged_prefill, "ref": paged_prefill_ref}
# (Hq, Hkv, D, block_size, new tokens per sequence, cached prefix per sequence, BLOCK_M/N)
CASES = [
    (4, 4, 16, 16, [33], [0], 16),  # plain causal prefill of one sequence
    (6, 2, 24, 5, [7, 19, 1, 0], [0, 6, 11, 3], 16),  # varlen with prefixes, a 1-token and an empty sequence
    (9, 3, 64, 16, [20, 37], [16, 5], 16),  # SmolLM2's GQA ratio and head dim, prefix of exactly one block
    (8, 1, 32, 7, [45], [30], 32),  # MQA, block size 7, multi-tile queries over a prefix
    # a serving step: decodes (one new token over a cached prefix) beside a prompt chunk and a new prompt; G = 4
    # packs 4 queries per 16-row tile, so tiles straddle queries and the diagonal
    (8, 2, 32, 8, [1, 1, 13, 1, 1, 22, 1], [40, 7, 16, 63, 1, 0, 9], 16),
    (16, 1, 16, 4, [1, 3, 2], [5, 0, 17], 16),  # G = 16 = BLOCK_M: one query per tile
    # the flat grid's binary search over 13 sequences: decodes around a 37-token chunk, a 2-token and an empty one
    (8, 2, 16, 4, [1, 1, 1, 1, 1, 2, 1, 1, 1, 37, 1, 0, 1], [9, 3, 30, 1, 14, 6, 2, 8, 21, 4, 11, 5, 7], 16),
    (32, 1, 16, 4, [3, 1], [2, 5], 16),  # G = 32 > BLOCK_M: a query spans two tiles (the per-sequence grid)
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, FP8], ids=["fp32", "bf16", "fp8"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"hq{c[0]}-hkv{c[1]}-d{c[2]}-bs{c[3]}-new{c[4]}-pre{c[5]}")
def test_paged_prefill_matches_oracle(impl, dtype, case):
    hq, hkv, d, bs, q_lens, prefixes, tile = case
    gen = torch.Generator().manual_seed(1000 * sum(q_lens) + 10 * hq + d)
    lens = [a + b for a, b in zip(q_lens, prefixes)]
    max_blocks = -(-max(lens) // bs) + 1
    num_blocks = len(lens) * max_blocks + 2
    kc, vc, ks, vs = random_cache(num_blocks, bs, hkv, d, dtype, gen=gen)  # the prefixes are these random values
    bt = random_block_tables(len(lens), max_blocks, num_blocks, gen=gen)
    t = sum(q_lens)
    act = torch.float32 if dtype == FP8 else dtype
    q = torch.randn(t, hq, d, generator=gen).to(DEVICE, act)
    k = torch.randn(t, hkv, d, generator=gen).to(DEVICE, act)
    v = torch.randn(t, hkv, d, generator=gen).to(DEVICE, act)
    q_lens_t = torch.tensor(q_lens, dtype=torch.int32, device=DEVICE)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32, device=DEVICE)
    cu[1:] = torch.cumsum(q_lens_t, 0)
    slots = slot_mapping_for(bt, seq_lens, q_lens_t, bs)
    kw = {"block_m": tile, "block_n": tile} if impl == "triton" else {}
    out = IMPLS[impl](q, k, v, cu, seq_lens, bt, kc, vc, slots, ks, vs, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    for b, (n_new, n) in enumerate(zip(q_lens, lens)):
        if n_new == 0:
            continue
        # the oracle reads the cache after the write: it checks the write and the attention together
        qb = q[cu[b]:cu[b + 1]].transpose(0, 1)  # [Hq, n_new, D]
        want = naive_paged_attention(qb, kc, vc, ks, vs, bt[b], n, n - n_new)
        torch.testing.assert_close(out[cu[b]:cu[b + 1]].transpose(0, 1).float(), want, atol=tol, rtol=tol)
        # and the new tokens' K AND V really are in the cache at their slots (the oracle reads the cache, so a kernel
        # that never wrote V and read it back from the cache passed the attention check alone); exact unless FP8
        s = slots[cu[b]:cu[b + 1]]
        wtol = dict(atol=0.1, rtol=0.07) if ks is not None else dict(atol=0, rtol=0)
        for cache, scale, new in ((kc, ks, k), (vc, vs, v)):
            got = cache.float().view(-1, hkv, d)[s]
            if scale is not None:
                got = got * scale.view(-1, hkv)[s].float()[..., None]
            torch.testing.assert_close(got, new[cu[b]:cu[b + 1]].float(), **wtol)


def test_skip_single_leaves_one_token_sequences_to_the_caller():
    """skip_single: the same outputs for the sequences with several new tokens (the one-token sequences' rows are
    left to the caller: phase 4's split mixed steps fill them with the decode kernel, tested there), and every
    row's K/V written."""
    hq, hkv, d, bs = 8, 2, 32, 8
    q_lens, prefixes = [1, 13, 1, 5, 1], [40, 3, 7, 0, 16]
    gen = torch.Generator().manual_seed(5)
    lens = [a + b for a, b in zip(q_lens, prefixes)]
    max_blocks = -(-max(lens) // bs) + 1
    num_blocks = len(lens) * max_blocks + 2
    kc, vc, _, _ = random_cache(num_blocks, bs, hkv, d, torch.float32, gen=gen)
    bt = random_block_tables(len(lens), max_blocks, num_blocks, gen=gen)
    t = sum(q_lens)
    q, k, v = (torch.randn(t, h, d, generator=gen).to(DEVICE) for h in (hq, hkv, hkv))
    ql = torch.tensor(q_lens, dtype=torch.int32, device=DEVICE)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32, device=DEVICE)
    cu[1:] = torch.cumsum(ql, 0)
    slots = slot_mapping_for(bt, sl, ql, bs)
    want = paged_prefill(q, k, v, cu, sl, bt, kc.clone(), vc.clone(), slots, block_m=16, block_n=16)
    kc2, vc2 = kc.clone(), vc.clone()
    got = paged_prefill(q, k, v, cu, sl, bt, kc2, vc2, slots, block_m=16, block_n=16, skip_single=True)
    multi = torch.repeat_interleave(ql > 1, ql)  # [T] rows of the sequences with several new tokens
    torch.testing.assert_close(got[multi], want[multi])
    assert torch.equal(kc2.view(-1, hkv, d)[slots], k) and torch.equal(vc2.view(-1, hkv, d)[slots], v)


def test_slot_mapping_for():
    bt = torch.tensor([[5, 2, 9], [1, 7, 0]], dtype=torch.int32)
    slots = slot_mapping_for(bt, torch.tensor([6, 2], dtype=torch.int32), torch.tensor([3, 2], dtype=torch.int32), 4)
    # sequence 0: positions 3,4,5 -> block 5 offset 3, block 2 offsets 0,1; sequence 1: positions 0,1 of block 1
    assert slots.tolist() == [5 * 4 + 3, 2 * 4 + 0, 2 * 4 + 1, 1 * 4 + 0, 1 * 4 + 1]


@pytest.mark.parametrize("impl", IMPLS)
def test_prefill_rejects_bad_inputs(impl):
    kc, vc, ks, vs = random_cache(4, 4, 2, 16, torch.float32)
    bt = torch.zeros(1, 2, dtype=torch.int32, device=DEVICE)
    lens = torch.tensor([3], dtype=torch.int32, device=DEVICE)
    q, k = torch.randn(3, 4, 16, device=DEVICE), torch.randn(3, 2, 16, device=DEVICE)
    slots = torch.arange(3, device=DEVICE)
    with pytest.raises(ValueError, match="cu_seqlens_q must be int32"):
        IMPLS[impl](q, k, k, torch.tensor([0, 3], device=DEVICE), lens, bt, kc, vc, slots)
    with pytest.raises(ValueError, match=r"q must be \[T, Hq, D\]"):
        IMPLS[impl](q[None], k, k, torch.tensor([0, 3], dtype=torch.int32, device=DEVICE), lens, bt, kc, vc, slots)


def test_serving_step_grid_is_flat(monkeypatch):
    """448 decodes beside one 1,024-token chunk (G = 8, BLOCK_M = 64): T // 8 + B programs per KV head, not
    max_q_len * G / BLOCK_M per sequence (128 x 449); G that does not divide BLOCK_M keeps the per-sequence grid."""
    import phase3_paged_fp8.paged_prefill as pp

    grids = []

    class Spy:
        def __getitem__(self, grid):
            grids.append(grid)
            return lambda *a, **k: None

    monkeypatch.setattr(pp, "paged_prefill_kernel", Spy())
    q_lens = [1] * 448 + [1024]
    b, t, bs = len(q_lens), sum(q_lens), 16
    cu = torch.zeros(b + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(q_lens), 0)
    lens = torch.tensor([x + 100 for x in q_lens], dtype=torch.int32)
    width = -(-int(lens.max()) // bs)
    bt = torch.arange(b * width, dtype=torch.int32).view(b, width) + 1
    kc = torch.zeros(b * width + 1, bs, 4, 64)
    for hq in (32, 12):  # G = 8 (flat), G = 3 (per sequence)
        q, k = torch.zeros(t, hq, 64), torch.zeros(t, 4, 64)
        slots = slot_mapping_for(bt, lens, torch.tensor(q_lens, dtype=torch.int32), bs)
        pp.paged_prefill(q, k, k, cu, lens, bt, kc, kc.clone(), slots)
    assert grids[0] == (t // 8 + b, 4, 1) and grids[0][0] == 633
    assert grids[1] == (-(-1024 * 3 // 64), 4, b)
