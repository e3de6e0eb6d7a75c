"""Paged decode: Triton kernel and gather+SDPA reference against a token-by-token oracle, on shuffled blocks."""
import pytest
import torch

from phase3_paged_fp8.cache_write import FP8
from phase3_paged_fp8.paged_decode import (default_min_tps, default_num_splits, default_tile, paged_decode,
                                            paged_decode_ref)
from phase3_paged_fp8.tests.helpers import DEVICE, naive_paged_attention, random_block_tables, random_cache

IMPLS = {"triton": paged_decode, "ref": paged_decode_ref}
# (Hq, Hkv, D, block_size, seq_lens, num_splits): GQA 1/3/4/8, awkward block sizes and lengths, one-token sequences
CASES = [
    (4, 4, 16, 16, [1, 33], 1),
    (6, 2, 24, 5, [7, 23, 1], 3),
    (9, 3, 64, 16, [50, 17], 2),
    (8, 1, 32, 7, [40], 4),
    (12, 4, 32, 3, [2, 9, 30], 5),  # more splits than some sequences have tiles: empty splits
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, FP8], ids=["fp32", "bf16", "fp8"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"hq{c[0]}-hkv{c[1]}-d{c[2]}-bs{c[3]}-lens{c[4]}-sp{c[5]}")
def test_paged_decode_matches_oracle(impl, dtype, case):
    hq, hkv, d, bs, lens, splits = case
    gen = torch.Generator().manual_seed(1000 * sum(lens) + 10 * hq + d)
    max_blocks = -(-max(lens) // bs) + 1
    num_blocks = len(lens) * max_blocks + 3
    kc, vc, ks, vs = random_cache(num_blocks, bs, hkv, d, dtype, gen=gen)
    bt = random_block_tables(len(lens), max_blocks, num_blocks, gen=gen)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    q = torch.randn(len(lens), hq, d, generator=gen).to(DEVICE)
    q = q if dtype == FP8 else q.to(dtype)
    kw = {"num_splits": splits, "block_n": 16} if impl == "triton" else {}
    out = IMPLS[impl](q, kc, vc, bt, seq_lens, ks, vs, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    for b, n in enumerate(lens):
        want = naive_paged_attention(q[b, :, None], kc, vc, ks, vs, bt[b].cpu() if DEVICE == "cpu" else bt[b], n,
                                     n - 1)[:, 0]
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(out[b].float(), want, atol=tol, rtol=tol)


def test_split_counts_agree():
    """Any split count gives the same answer (the reduction is exact up to rounding)."""
    gen = torch.Generator().manual_seed(1)
    kc, vc, _, _ = random_cache(30, 8, 2, 32, torch.float32, gen=gen)
    bt = random_block_tables(2, 12, 30, gen=gen)
    lens = torch.tensor([90, 61], dtype=torch.int32, device=DEVICE)
    q = torch.randn(2, 4, 32, generator=gen).to(DEVICE)
    outs = [paged_decode(q, kc, vc, bt, lens, num_splits=s, block_n=16) for s in (1, 2, 6)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-5, rtol=1e-5)


def test_splits_follow_the_sequence_not_the_table():
    """A CUDA-graph step has a wide block table (room for max_model_len) and short sequences: the splits divide each
    sequence's own length, so with 8 splits a 40-token sequence uses tiles across all of them. Same answer as 1."""
    gen = torch.Generator().manual_seed(2)
    kc, vc, _, _ = random_cache(200, 4, 2, 16, torch.float32, gen=gen)
    bt = random_block_tables(3, 64, 200, gen=gen)  # 256 token slots per row
    lens = torch.tensor([40, 5, 1], dtype=torch.int32, device=DEVICE)
    q = torch.randn(3, 4, 16, generator=gen).to(DEVICE)
    one, eight = (paged_decode(q, kc, vc, bt, lens, num_splits=s, block_n=16) for s in (1, 8))
    torch.testing.assert_close(eight, one, atol=1e-5, rtol=1e-5)
    few = paged_decode(q, kc, vc, bt, lens, num_splits=8, block_n=16, min_tokens_per_split=32)  # 2 of 8 splits used
    torch.testing.assert_close(few, one, atol=1e-5, rtol=1e-5)
    for b, n in enumerate(lens.tolist()):
        want = naive_paged_attention(q[b, :, None], kc, vc, None, None, bt[b].cpu() if DEVICE == "cpu" else bt[b], n,
                                     n - 1)[:, 0]
        torch.testing.assert_close(eight[b], want, atol=1e-4, rtol=1e-4)


def test_default_num_splits():
    assert default_num_splits(32, 4, 8192, num_sms=132) == 8  # 128 (seq, head) pairs -> 1024 programs
    assert default_num_splits(1, 8, 131072, num_sms=132) == 128  # one long sequence: capped at 128 splits
    assert default_num_splits(1, 4, 4096, num_sms=132, block_n=32) == 32  # splits of no fewer than 4 tiles
    assert default_num_splits(64, 4, 2048, num_sms=132, block_n=32) == 4  # 5 rounded down to a power of two
    assert default_num_splits(64, 8, 100, num_sms=132) == 1  # short context: nothing to split
    assert default_num_splits(1, 4, 400, num_sms=132, block_n=32) == 12  # a narrow table: one tile per split at most
    assert default_num_splits(1, 4, 2048, num_sms=132, block_n=32) == 32  # a wide one: at most 32 splits


def test_default_min_tps_and_tile():
    """Splits stay one tile long while the batch leaves SMs idle and grow as (sequence, KV head) pairs fill them."""
    assert default_min_tps(1, 4, num_sms=132, block_n=32) == 32
    assert default_min_tps(64, 4, num_sms=132, block_n=64) == 64 * 15  # 256 pairs: ~1K tokens -> B=64/512 unsplit
    assert default_min_tps(32, 4, num_sms=132, block_n=32) == 32 * 7
    assert default_tile(1024, 4, fp8=False) == default_tile(1024, 4, fp8=True) == (64, 2, 3)
    assert default_tile(1, 4, fp8=False) == (32, 4, 2) and default_tile(1, 4, fp8=True) == (128, 4, 2)
    assert default_tile(16, 4, fp8=False) == (64, 4, 2)


@pytest.mark.parametrize("impl", IMPLS)
def test_decode_rejects_bad_inputs(impl):
    kc, vc, ks, vs = random_cache(4, 4, 2, 16, FP8)
    bt = torch.zeros(1, 2, dtype=torch.int32, device=DEVICE)
    lens = torch.tensor([3], dtype=torch.int32, device=DEVICE)
    q = torch.randn(1, 4, 16, device=DEVICE)
    fn = IMPLS[impl]
    with pytest.raises(ValueError, match="FP8 cache needs k_scale"):
        fn(q, kc, vc, bt, lens)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        fn(torch.randn(1, 3, 16, device=DEVICE), kc, vc, bt, lens, ks, vs)
    with pytest.raises(ValueError, match="block_tables must be int32"):
        fn(q, kc, vc, bt.long(), lens, ks, vs)
    with pytest.raises(ValueError, match="seq_lens must be int32"):
        fn(q, kc, vc, bt, lens.long(), ks, vs)
    with pytest.raises(ValueError, match="scales must be"):
        fn(q, kc, vc, bt, lens, ks.float(), vs)
