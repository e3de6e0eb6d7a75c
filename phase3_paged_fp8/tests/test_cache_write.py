"""Cache write and FP8 quantisation: kernel vs reference (bitwise), round-trip error, skipped slots, bad input."""
import pytest
import torch

from phase3_paged_fp8.cache_write import (FP8, FP8_MAX, SCALE_DTYPE, dequantize_fp8_ref, quantize_fp8_ref,
                                          write_kv_cache, write_kv_cache_ref)
from phase3_paged_fp8.paged_decode import interpreting
from phase3_paged_fp8.tests.helpers import DEVICE


def _empty(nb, bs, h, d, dtype):
    kc = torch.full((nb, bs, h, d), 3.0, device=DEVICE).to(dtype)  # non-zero: untouched slots must stay 3.0
    vc = kc.clone()
    if dtype != FP8:
        return kc, vc, None, None
    return kc, vc, torch.full((nb, bs, h), 2.0, dtype=SCALE_DTYPE, device=DEVICE), \
        torch.full((nb, bs, h), 2.0, dtype=SCALE_DTYPE, device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, FP8], ids=["fp32", "bf16", "fp8"])
@pytest.mark.parametrize("shape", [(11, 3, 24), (5, 1, 64), (9, 4, 16)], ids=lambda s: "t{}-h{}-d{}".format(*s))
def test_write_kernel_equals_reference(dtype, shape):
    t, h, d = shape
    gen = torch.Generator().manual_seed(t * h * d)
    k = (torch.randn(t, h, d, generator=gen) * torch.logspace(-3, 2, t)[:, None, None]).to(DEVICE)  # wide range
    v = torch.randn(t, h, d, generator=gen).to(DEVICE)
    nb, bs = 8, 5
    slots = torch.randperm(nb * bs, generator=gen)[:t].to(DEVICE)
    slots[2] = -1  # a padding token: must not be written
    got, want = _empty(nb, bs, h, d, dtype), _empty(nb, bs, h, d, dtype)
    write_kv_cache(k, v, slots, *got)
    write_kv_cache_ref(k, v, slots, *want)
    for g, w in zip(got, want):
        if g is None:
            continue
        if g.dtype == torch.bfloat16 and interpreting():
            # the CPU interpreter truncates fp32 -> bf16 where GPUs round to nearest: allow that one ulp
            torch.testing.assert_close(g, w, atol=0, rtol=2 ** -7)
        else:
            assert torch.equal(g.view(torch.uint8) if g.dtype == FP8 else g, w.view(torch.uint8) if w.dtype == FP8
                               else w), "kernel and reference must store bit-identical caches"
    untouched = torch.ones(nb * bs, dtype=torch.bool, device=DEVICE)
    untouched[slots[slots >= 0]] = False
    assert (got[0].float().view(nb * bs, h, d)[untouched] == 3.0).all()


def test_fp8_round_trip_error():
    x = torch.randn(64, 4, 64) * torch.logspace(-4, 3, 64)[:, None, None]
    q, s = quantize_fp8_ref(x)
    assert q.dtype == FP8 and s.dtype == SCALE_DTYPE and s.shape == x.shape[:-1]
    y = dequantize_fp8_ref(q, s)
    amax = x.abs().amax(-1, keepdim=True)
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 for values in the normal range, and every head's largest
    # element maps to 448 within one e4m3 step (where the fp16 scale is a normal number, amax >= 448 * 2^-14)
    rel = ((y - x).abs() / x.abs().clamp_min(amax / 64)).max()
    assert rel <= 2 ** -4 + 1e-3
    normal = amax[..., 0] >= FP8_MAX * 2 ** -14
    assert normal.sum() > 100
    assert (q.float().abs().amax(-1)[normal] - FP8_MAX).abs().max() <= 32


def test_fp8_zero_head_is_finite():
    q, s = quantize_fp8_ref(torch.zeros(2, 3, 8))
    assert torch.isfinite(dequantize_fp8_ref(q, s)).all() and (dequantize_fp8_ref(q, s) == 0).all()


@pytest.mark.parametrize("fn", [write_kv_cache, write_kv_cache_ref])
def test_write_rejects_bad_inputs(fn):
    kc, vc, ks, vs = _empty(4, 4, 2, 16, FP8)
    k = torch.randn(3, 2, 16, device=DEVICE)
    slots = torch.arange(3, device=DEVICE)
    with pytest.raises(ValueError, match="FP8 cache needs"):
        fn(k, k, slots, kc, vc)
    with pytest.raises(ValueError, match="the cache holds"):
        fn(torch.randn(3, 3, 16, device=DEVICE), torch.randn(3, 3, 16, device=DEVICE), slots, kc, vc, ks, vs)
    with pytest.raises(ValueError, match="slot_mapping must be"):
        fn(k, k, slots.float(), kc, vc, ks, vs)
