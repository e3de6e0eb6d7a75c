"""Bad input to the phase 2 wrappers (bad-input audit): each case failed before with a silent wrong answer (a block
id outside the cache read other memory), or an error from inside torch / the Triton interpreter. Runs on CPU tensors:
the block-id check reads the table's values, so the wrapper does it only there (no device sync on CUDA)."""
import pytest
import torch

from phase2_mla.mla_decode import mla_paged_decode
from phase2_mla.rope import cos_sin_cache, rope_
from phase2_mla.tests.test_mla_decode import make_case


@pytest.mark.parametrize("bad_id", [-1, 99])
def test_block_id_outside_the_cache(bad_id):
    q_lat, q_pe, kv, bt, sl = make_case([5, 9], page=4, h=2, dc=16, dr=16, device="cpu")  # 6 + 3 blocks
    bt[1, 2] = bad_id  # sequence 1 (9 tokens) uses all 3 of its entries
    with pytest.raises(ValueError, match=rf"block_table\[1, 2\] = {bad_id} is not a block of the cache \(ids 0\.\.8\)"):
        mla_paged_decode(q_lat, q_pe, kv, bt, sl, 0.1, block_n=8)


def test_unused_block_table_entries_may_be_padding():
    q_lat, q_pe, kv, bt, sl = make_case([5, 9], page=4, h=2, dc=16, dr=16, device="cpu")
    want = mla_paged_decode(q_lat, q_pe, kv, bt, sl, 0.1, block_n=8)
    bt[0, 2] = -1  # sequence 0 (5 tokens) uses 2 entries: the third is padding
    torch.testing.assert_close(mla_paged_decode(q_lat, q_pe, kv, bt, sl, 0.1, block_n=8), want)


def test_empty_batch_scale_and_tile_knobs():
    q_lat, q_pe, kv, bt, sl = make_case([5, 9], page=4, h=2, dc=16, dr=16, device="cpu")
    out = mla_paged_decode(q_lat[:0], q_pe[:0], kv, bt[:0], sl[:0], 0.1)
    assert out.shape == (0, 2, 16)
    with pytest.raises(TypeError, match="scale must be a Python float, got Tensor; pass float"):
        mla_paged_decode(q_lat, q_pe, kv, bt, sl, torch.tensor(0.1))
    for knob, v in (("block_n", 0), ("block_n", 12), ("block_h", 3)):
        with pytest.raises(ValueError, match=f"{knob} must be a power of two \\(a Triton tile size\\), got {v}"):
            mla_paged_decode(q_lat, q_pe, kv, bt, sl, 0.1, **{knob: v})
    with pytest.raises(TypeError, match="block_table must be a torch.Tensor, got list"):
        mla_paged_decode(q_lat, q_pe, kv, bt.tolist(), sl, 0.1)


def test_rope_non_tensors_and_empty_cache():
    inv = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
    cos, sin = cos_sin_cache(inv, 16)
    q, k = torch.randn(3, 2, 8), torch.randn(3, 1, 8)
    with pytest.raises(TypeError, match="positions must be a torch.Tensor, got list.*int64"):
        rope_(q, k, cos, sin, [0, 1, 2])
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match=f"max_pos must be a positive int.*got {bad}"):
            cos_sin_cache(inv, bad)


@pytest.mark.parametrize("kw, msg", [(dict(batch_size=0), "batch_size must be an int >= 1, got 0"),
                                     (dict(batch_size=-1), "batch_size must be an int >= 1, got -1"),
                                     (dict(max_len=1.5), "max_len must be an int >= 1, got 1.5"),
                                     (dict(dtype="bf16"), "dtype must be torch.float32, .* got 'bf16'"),
                                     (dict(dtype=torch.int8), "dtype must be .* got torch.int8")])
def test_paged_latent_cache_arguments(kw, msg):
    from common.config import get_preset
    from phase2_mla.paged_latent_cache import PagedLatentCache

    args = dict(batch_size=1, max_len=8) | kw
    with pytest.raises(ValueError, match=f"PagedLatentCache: {msg}"):
        PagedLatentCache(get_preset("deepseek-v3-tiny"), **args)
