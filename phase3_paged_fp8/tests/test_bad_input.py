"""Bad input to the phase 3 wrappers (bad-input audit). Each case failed before: a slot past the cache crashed the
process (the interpreter wrote outside it; on a GPU, memory corruption), a block id outside the cache, seq_lens past
the table, a non-contiguous seq_lens, a bad v_scale, num_splits=0 or inconsistent cu_seqlens_q gave silent wrong
answers, the rest an error from inside Triton. The value checks run on CPU tensors only (no device sync on CUDA)."""
import pytest
import torch

from phase3_paged_fp8.cache_write import FP8, write_kv_cache, write_kv_cache_ref
from phase3_paged_fp8.paged_decode import paged_decode, paged_decode_ref
from phase3_paged_fp8.paged_prefill import paged_prefill, paged_prefill_ref, slot_mapping_for
from phase3_paged_fp8.tests.helpers import random_block_tables, random_cache

NB, BS, HKV, D, HQ = 8, 4, 2, 16, 4
G = torch.Generator().manual_seed(0)


def decode_case(dtype=torch.float32):
    kc, vc, ks, vs = random_cache(NB, BS, HKV, D, dtype, device="cpu", gen=G)
    bt = random_block_tables(2, 3, NB, device="cpu", gen=G)
    return torch.randn(2, HQ, D, generator=G), kc, vc, bt, torch.tensor([5, 9], dtype=torch.int32), ks, vs


@pytest.mark.parametrize("impl", [paged_decode, paged_decode_ref], ids=["triton", "ref"])
def test_decode_block_ids_and_lengths(impl):
    q, kc, vc, bt, sl, _, _ = decode_case()
    for bad in (-1, NB):
        b2 = bt.clone()
        b2[1, 2] = bad  # sequence 1 (9 tokens) uses all three entries
        with pytest.raises(ValueError, match=rf"block_table\[1, 2\] = {bad} is not a block of the cache \(ids 0\.\.7\)"):
            impl(q, kc, vc, b2, sl)
    with pytest.raises(ValueError, match="seq_lens up to 20 .* need more than block_table's 3 blocks of 4 tokens"):
        impl(q, kc, vc, bt, torch.tensor([5, 20], dtype=torch.int32))
    with pytest.raises(ValueError, match="seq_lens must be >= 0, got -3"):
        impl(q, kc, vc, bt, torch.tensor([-3, 9], dtype=torch.int32))
    b2 = bt.clone()
    b2[0, 2] = -1  # sequence 0 (5 tokens) uses two entries: the third is padding
    torch.testing.assert_close(impl(q, kc, vc, b2, sl), impl(q, kc, vc, bt, sl))


def test_decode_layout_dtype_and_knobs():
    q, kc, vc, bt, sl, _, _ = decode_case()
    with pytest.raises(ValueError, match="seq_lens must be contiguous"):
        paged_decode(q, kc, vc, bt, torch.tensor([5, 0, 9, 0], dtype=torch.int32)[::2])
    with pytest.raises(ValueError, match="share one dtype of fp32/fp16/bf16/fp8 .* got torch.int8 and torch.int8"):
        paged_decode(q, kc.to(torch.int8), vc.to(torch.int8), bt, sl)
    with pytest.raises(ValueError, match="got torch.bfloat16 and torch.float32"):
        paged_decode(q, kc.bfloat16(), vc, bt, sl)
    for knob, v in (("num_splits", 0), ("num_splits", -1), ("block_n", 12)):
        with pytest.raises(ValueError, match=f"{knob} must be"):
            paged_decode(q, kc, vc, bt, sl, **{knob: v})
    with pytest.raises(TypeError, match="sm_scale must be a Python float, got Tensor"):
        paged_decode(q, kc, vc, bt, sl, sm_scale=torch.tensor(0.25))
    with pytest.raises(TypeError, match="block_tables must be a torch.Tensor, got list"):
        paged_decode(q, kc, vc, bt.tolist(), sl)
    assert paged_decode(q[:0], kc, vc, bt[:0], sl[:0]).shape == (0, HQ, D)


@pytest.mark.parametrize("bad", ["fp32", "shape", "strided"])
def test_v_scale_is_checked_like_k_scale(bad):
    q, kc, vc, bt, sl, ks, vs = decode_case(FP8)
    vs = {"fp32": vs.float(), "shape": vs[:4], "strided": torch.cat([vs, vs], 2)[..., ::2]}[bad]
    with pytest.raises(ValueError, match=r"scales must be contiguous torch.float16 \(8, 4, 2\) .*; v_scale is"):
        paged_decode(q, kc, vc, bt, sl, ks, vs)
    with pytest.raises(ValueError, match=r"scales must be contiguous torch.float16 \(8, 4, 2\) .*; v_scale is"):
        write_kv_cache(torch.randn(1, HKV, D), torch.randn(1, HKV, D), torch.tensor([3]), kc, vc, ks, vs)


@pytest.mark.parametrize("impl", [write_kv_cache, write_kv_cache_ref], ids=["triton", "ref"])
def test_write_slots_outside_the_cache(impl):
    k, v = torch.randn(3, HKV, D), torch.randn(3, HKV, D)
    kc, vc, _, _ = random_cache(NB, BS, HKV, D, torch.float32, device="cpu", gen=G)
    before = kc.clone()
    for slot in (NB * BS, 1000):
        with pytest.raises(ValueError, match=rf"slot_mapping\[2\] = {slot} is outside the cache's 32 slots"):
            impl(k, v, torch.tensor([0, 5, slot]), kc, vc)
    assert torch.equal(kc, before)  # refused before anything was written
    impl(k, v, torch.tensor([0, -1, 31]), kc, vc)  # negative = padding, skipped
    torch.testing.assert_close(kc[7, 3], k[2])


def test_write_layout_and_dtypes():
    k, v = torch.randn(3, HKV, D), torch.randn(3, HKV, D)
    kc, vc, _, _ = random_cache(NB, BS, HKV, D, torch.float32, device="cpu", gen=G)
    with pytest.raises(ValueError, match="slot_mapping must be contiguous"):
        write_kv_cache(k, v, torch.tensor([0, 9, 1, 9, 2, 9])[::2], kc, vc)
    with pytest.raises(ValueError, match="k and v must share one float dtype, got torch.int32"):
        write_kv_cache(k.int(), v.int(), torch.tensor([0, 1, 2]), kc, vc)
    with pytest.raises(ValueError, match="k_cache and v_cache must share one dtype"):
        write_kv_cache(k, v, torch.tensor([0, 1, 2]), kc, vc.bfloat16())


@pytest.mark.parametrize("impl", [paged_prefill, paged_prefill_ref], ids=["triton", "ref"])
def test_prefill_offsets(impl):
    kc, vc, _, _ = random_cache(NB, BS, HKV, D, torch.float32, device="cpu", gen=G)
    bt = random_block_tables(2, 3, NB, device="cpu", gen=G)
    q, k, v = torch.randn(4, HQ, D), torch.randn(4, HKV, D), torch.randn(4, HKV, D)
    cu, sl = torch.tensor([0, 1, 4], dtype=torch.int32), torch.tensor([5, 9], dtype=torch.int32)
    slots = slot_mapping_for(bt, sl, cu[1:] - cu[:-1], BS)
    for bad in ([0, 1, 5], [0, 3, 1], [1, 2, 4]):
        with pytest.raises(ValueError, match="must rise from 0 to at most the number of packed tokens \\(4\\)"):
            impl(q, k, v, torch.tensor(bad, dtype=torch.int32), sl, bt, kc, vc, slots)
    with pytest.raises(ValueError, match=r"sequence 1 has 3 new tokens but seq_lens\[1\] = 2"):
        impl(q, k, v, cu, torch.tensor([5, 2], dtype=torch.int32), bt, kc, vc, slots)


def test_prefill_knobs():
    kc, vc, _, _ = random_cache(NB, BS, HKV, D, torch.float32, device="cpu", gen=G)
    bt = random_block_tables(2, 3, NB, device="cpu", gen=G)
    q, k, v = torch.randn(4, HQ, D), torch.randn(4, HKV, D), torch.randn(4, HKV, D)
    cu, sl = torch.tensor([0, 1, 4], dtype=torch.int32), torch.tensor([5, 9], dtype=torch.int32)
    slots = slot_mapping_for(bt, sl, cu[1:] - cu[:-1], BS)
    with pytest.raises(ValueError, match="max_q_len=1 is below the longest sequence's 3 new tokens"):
        paged_prefill(q, k, v, cu, sl, bt, kc, vc, slots, max_q_len=1)
    with pytest.raises(ValueError, match="block_m must be a power of two"):
        paged_prefill(q, k, v, cu, sl, bt, kc, vc, slots, block_m=0)


def test_broken_allocator_override_is_not_replaced_by_the_reference(monkeypatch):
    """Before: an override of allocator.block_table that failed to import was swallowed by the fallback to phase 1's
    Python reference (meant for a machine without the Rust wheel), so the learner's code silently never ran."""
    from common.config import get_preset
    from phase3_paged_fp8.paged_cache import PagedKVCache

    monkeypatch.setenv("TITAN_ARTIFACTS", "allocator.block_table=my_alloc.tables:BlockTableManager")
    with pytest.raises(ImportError, match="'allocator.block_table' -> 'my_alloc.tables:BlockTableManager'"):
        PagedKVCache(get_preset("tinyllama-1.1b").replace(num_hidden_layers=1), 1, 8)


@pytest.mark.parametrize("kw, msg", [(dict(batch_size=0), "batch_size must be an int >= 1, got 0"),
                                     (dict(batch_size=-1), "batch_size must be an int >= 1, got -1"),
                                     (dict(max_len=0), "max_len must be an int >= 1, got 0"),
                                     (dict(block_size=0), "block_size must be an int >= 1, got 0")])
def test_paged_kv_cache_arguments(kw, msg):
    from common.config import get_preset
    from phase3_paged_fp8.paged_cache import PagedKVCache

    args = dict(batch_size=1, max_len=8) | kw
    with pytest.raises(ValueError, match=f"PagedKVCache: {msg}"):
        PagedKVCache(get_preset("tinyllama-1.1b").replace(num_hidden_layers=1), **args)


@pytest.mark.parametrize("impl", [paged_prefill, paged_prefill_ref], ids=["triton", "ref"])
def test_prefill_rows_past_the_offsets_are_padding(impl):
    """cu_seqlens_q may end before the packed rows (phase 4 pads a step to its graph's bucket): the real rows are
    what the unpadded call gives, the padding rows' K/V go to their slots (here a scratch block) and nothing else."""
    kc, vc, _, _ = random_cache(NB, BS, HKV, D, torch.float32, device="cpu", gen=G)
    bt = random_block_tables(2, 3, NB - 1, device="cpu", gen=G)
    cu, sl = torch.tensor([0, 1, 4], dtype=torch.int32), torch.tensor([5, 9], dtype=torch.int32)
    slots = slot_mapping_for(bt, sl, cu[1:] - cu[:-1], BS)
    q, k, v = torch.randn(6, HQ, D), torch.randn(6, HKV, D), torch.randn(6, HKV, D)  # rows 4, 5: padding
    scratch = torch.full((2,), (NB - 1) * BS, dtype=torch.long)
    want = impl(q[:4], k[:4], v[:4], cu, sl, bt, kc.clone(), vc.clone(), slots)
    kc2, vc2 = kc.clone(), vc.clone()
    got = impl(q, k, v, cu, sl, bt, kc2, vc2, torch.cat((slots, scratch)))
    torch.testing.assert_close(got[:4], want)
    torch.testing.assert_close(kc2.view(-1, HKV, D)[slots], k[:4])
