"""The fused kernels (Triton, under the CPU interpreter here) and their references against common/llama.py's math."""
import pytest
import torch
import torch.nn.functional as F

from common.config import ModelConfig
from common.llama import RMSNorm, RotaryEmbedding, apply_rope
from phase4_scheduler import fused_kernels as fk
from phase4_scheduler import skinny_gemm as sg

DTYPES = [torch.float32, torch.bfloat16]


def tol(dtype):  # the interpreter rounds to bf16 differently from torch (1 ulp); fp32 must agree to rounding
    return {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}


@pytest.mark.parametrize("impl", [fk.rms_norm, fk.rms_norm_ref], ids=["triton", "ref"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t,h", [(1, 64), (5, 100)])
def test_rms_norm_matches_llama_rmsnorm(impl, dtype, t, h):
    g = torch.Generator().manual_seed(t * h)
    x, res = (torch.randn(t, h, generator=g).to(dtype) for _ in range(2))
    norm = RMSNorm(h, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(h, generator=g) + 1)
        torch.testing.assert_close(impl(x, norm.weight, 1e-5), norm(x), **tol(dtype))
        y, r = impl(x, norm.weight, 1e-5, residual=res)
        torch.testing.assert_close(r, x + res, **tol(dtype))
        torch.testing.assert_close(y, norm(x + res), **tol(dtype))


@pytest.mark.parametrize("impl", [fk.silu_mul, fk.silu_mul_ref], ids=["triton", "ref"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t,i", [(1, 8), (3, 1100)])  # 1100: two programs per row, the second one masked
def test_silu_mul(impl, dtype, t, i):
    gu = (torch.randn(t, 2 * i, generator=torch.Generator().manual_seed(i)) * 3).to(dtype)
    torch.testing.assert_close(impl(gu), F.silu(gu[:, :i]) * gu[:, i:], **tol(dtype))


@pytest.mark.parametrize("impl", [fk.rope_qk, fk.rope_qk_ref], ids=["triton", "ref"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 2.0},
                                     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}])
def test_rope_qk_matches_rotary_embedding(impl, dtype, scaling):
    cfg = ModelConfig(hidden_size=96, num_attention_heads=6, num_key_value_heads=2, rope_scaling=scaling,
                      rope_theta=500.0)  # D=16, 6 q + 2 k heads: not a power of two
    hq, hkv, d, t = 6, 2, 16, 5
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(t, (hq + 2 * hkv) * d, generator=g).to(dtype)
    pos = torch.tensor([0, 7, 3, 299, 150])  # arbitrary order, as in a packed batch
    cache = fk.make_cos_sin_cache(cfg, 300)
    out = impl(qkv.clone(), pos, cache, hq, hkv, d)
    cos, sin = RotaryEmbedding(cfg)(pos[None], dtype)  # [1, T, D]
    q = qkv[:, :hq * d].view(t, hq, d).transpose(0, 1)[None]  # [1, Hq, T, D]
    k = qkv[:, hq * d:(hq + hkv) * d].view(t, hkv, d).transpose(0, 1)[None]
    torch.testing.assert_close(out[:, :hq * d], apply_rope(q, cos, sin)[0].transpose(0, 1).reshape(t, -1), **tol(dtype))
    torch.testing.assert_close(out[:, hq * d:(hq + hkv) * d], apply_rope(k, cos, sin)[0].transpose(0, 1).reshape(t, -1),
                               **tol(dtype))
    assert torch.equal(out[:, (hq + hkv) * d:], qkv[:, (hq + hkv) * d:]), "v must be left alone"


def test_rope_qk_is_in_place():
    cfg = ModelConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=1)
    qkv = torch.randn(3, 4 * 16)
    before = qkv.clone()
    out = fk.rope_qk(qkv, torch.tensor([1, 2, 3]), fk.make_cos_sin_cache(cfg, 8), 2, 1, 16)
    assert out.data_ptr() == qkv.data_ptr() and not torch.equal(qkv, before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(1, 37, 100), (1, 8, 64), (3, 37, 100), (16, 20, 48)])
def test_linear_small_m(dtype, m, n, k):
    g = torch.Generator().manual_seed(m * n + k)
    x, w = torch.randn(m, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype)
    want = F.linear(x.float(), w.float())
    got = sg.linear_small_m(x, w)
    assert got.shape == (m, n) and got.dtype == dtype
    torch.testing.assert_close(got.float(), want, **({"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else
                                                     {"rtol": 2e-2, "atol": 1e-1}))
    torch.testing.assert_close(sg.linear_small_m_ref(x, w).float(), want, **tol(dtype) | {"atol": 1e-1}
                               if dtype != torch.float32 else {"rtol": 1e-5, "atol": 1e-4})


@pytest.mark.parametrize("impl", [sg.norm_linear, sg.norm_linear_ref], ids=["triton", "ref"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,with_res", [(1, True), (1, False), (5, True)])
def test_norm_linear_equals_norm_then_linear(impl, dtype, m, with_res):
    g = torch.Generator().manual_seed(m)
    x, res = torch.randn(m, 100, generator=g).to(dtype), torch.randn(m, 100, generator=g).to(dtype)
    norm = RMSNorm(100, 1e-5).to(dtype)
    w = (torch.randn(37, 100, generator=g) / 10).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(100, generator=g) + 1)
        out, r = impl(x, norm.weight, 1e-5, w, res if with_res else None)
        stream = x + res if with_res else x
        want = F.linear(norm(stream).float(), w.float())
    torch.testing.assert_close(r, stream, **tol(dtype))
    torch.testing.assert_close(out.float(), want, **({"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else
                                                     {"rtol": 5e-2, "atol": 5e-2}))


@pytest.mark.parametrize("impl", [sg.silu_mul_linear, sg.silu_mul_linear_ref], ids=["triton", "ref"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 4])
def test_silu_mul_linear_equals_silu_mul_then_linear(impl, dtype, m):
    g = torch.Generator().manual_seed(10 + m)
    gu, w = torch.randn(m, 2 * 72, generator=g).to(dtype), (torch.randn(20, 72, generator=g) / 8).to(dtype)
    want = F.linear((F.silu(gu[:, :72]) * gu[:, 72:]).float(), w.float())
    torch.testing.assert_close(impl(gu, w).float(), want, **({"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32
                                                             else {"rtol": 5e-2, "atol": 5e-2}))


@pytest.mark.parametrize("impl", [sg.norm_linear_rope, sg.norm_linear_rope_ref], ids=["triton", "ref"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 5])
def test_norm_linear_rope_equals_norm_linear_then_rope(impl, dtype, m):
    hq, hkv, d, k = 4, 2, 16, 48  # 8 q/k heads, 2 v heads: the v rows must come out unrotated
    cfg = ModelConfig(hidden_size=hq * d, num_attention_heads=hq, num_key_value_heads=hkv, rope_theta=100.0)
    cache = fk.make_cos_sin_cache(cfg, 64)
    g = torch.Generator().manual_seed(20 + m)
    x, res = torch.randn(m, k, generator=g).to(dtype), torch.randn(m, k, generator=g).to(dtype)
    nw, w = torch.randn(k, generator=g).to(dtype), (torch.randn((hq + 2 * hkv) * d, k, generator=g) / 7).to(dtype)
    pos = torch.randint(0, 64, (m,), generator=g)
    out, r = impl(x, nw, 1e-5, w, pos, cache, hq, hkv, d, res)
    y, r_want = fk.rms_norm_ref(x, nw, 1e-5, res)
    want = fk.rope_qk_ref(F.linear(y.float(), w.float()), pos, cache, hq, hkv, d)
    torch.testing.assert_close(r, r_want, **tol(dtype))
    torch.testing.assert_close(out.float(), want, **({"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else
                                                     {"rtol": 5e-2, "atol": 5e-2}))


@pytest.mark.parametrize("persistent", ["0", "1"])
@pytest.mark.parametrize("n,k,with_res", [(80, 64, True), (200, 72, False), (48, 100, True)])
def test_norm_linear_silu_is_norm_linear_then_silu_mul_bit_for_bit(monkeypatch, persistent, n, k, with_res):
    """The SiLU epilogue (gate rows j and up rows I + j in one program) stores exactly what the two kernels give."""
    monkeypatch.setenv(sg.PERSISTENT_ENV, persistent)
    g = torch.Generator().manual_seed(n + k)
    x, res = (torch.randn(1, k, generator=g).bfloat16() for _ in range(2))
    w, nw = (torch.randn(n, k, generator=g) / 5).bfloat16(), (torch.randn(k, generator=g) + 1).bfloat16()
    res = res if with_res else None
    gu, r_want = sg.norm_linear(x, nw, 1e-5, w, res)
    act, r = sg.norm_linear_silu(x, nw, 1e-5, w, res)
    assert act.shape == (1, n // 2) and torch.equal(act, fk.silu_mul(gu)) and torch.equal(r, r_want)
    want, _ = sg.norm_linear_silu_ref(x.float(), nw.float(), 1e-5, w.float(), None if res is None else res.float())
    torch.testing.assert_close(act.float(), want, rtol=5e-2, atol=0.15 * want.abs().max().item())


def test_norm_linear_silu_several_rows_and_bad_shapes():
    g = torch.Generator().manual_seed(3)
    x, w, nw = torch.randn(3, 64, generator=g), torch.randn(80, 64, generator=g), torch.randn(64, generator=g) + 1
    act, r = sg.norm_linear_silu(x, nw, 1e-5, w)
    want, _ = sg.norm_linear_silu_ref(x, nw, 1e-5, w)
    torch.testing.assert_close(act, want, rtol=1e-5, atol=1e-4)
    assert r is x
    with pytest.raises(ValueError, match="even number of gate_up rows"):
        sg.norm_linear_silu(x[:1], nw, 1e-5, w[:79])
    with pytest.raises(ValueError, match="norm_w"):
        sg.norm_linear_silu(x, nw[:10], 1e-5, w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(37, 100), (200, 72), (8, 64), (130, 33)])
def test_persistent_gemv_matches_the_regular_kernel(monkeypatch, dtype, n, k):
    """Every prologue through the persistent kernel (several slabs a program, K over several tiles or one) against
    the regular kernel and the reference."""
    g = torch.Generator().manual_seed(7 * n + k)
    x, res = (torch.randn(1, k, generator=g).to(dtype) for _ in range(2))
    w, nw = (torch.randn(n, k, generator=g) / 5).to(dtype), (torch.randn(k, generator=g) + 1).to(dtype)
    gu = torch.randn(1, 2 * k, generator=g).to(dtype)
    runs = {}
    for on in ("0", "1"):
        monkeypatch.setenv(sg.PERSISTENT_ENV, on)
        runs[on] = (sg.linear_small_m(x, w), *sg.norm_linear(x, nw, 1e-5, w, res), sg.silu_mul_linear(gu, w))
    close = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 6e-2}
    for a, b in zip(runs["0"], runs["1"]):
        torch.testing.assert_close(a.float(), b.float(), **close)
    assert torch.equal(runs["0"][2], runs["1"][2])  # x + res: the same add
    torch.testing.assert_close(runs["1"][0].float(), F.linear(x.float(), w.float()), **close)


@pytest.mark.parametrize("persistent", ["0", "1"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_into_an_fp32_buffer_is_the_gemv_then_float(monkeypatch, persistent, dtype):
    """out= (the logits buffer): the GEMV stores its result rounded to x's dtype, as fp32 -- bit for bit
    linear_small_m(x, w).float(), so the runner's conversion kernel can go."""
    monkeypatch.setenv(sg.PERSISTENT_ENV, persistent)
    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(1, 72, generator=g).to(dtype), torch.randn(50, 72, generator=g).to(dtype)
    buf = torch.full((1, 50), float("nan"))
    got = sg.linear_small_m(x, w, out=buf)
    assert got.data_ptr() == buf.data_ptr() and torch.equal(buf, sg.linear_small_m(x, w).float())
    many = torch.full((3, 50), float("nan"))  # through the dispatcher: one row -> the GEMV, more -> a copy
    assert torch.equal(sg.linear(x, w, out=many[:1]), sg.linear_small_m(x, w).float())
    xs = torch.randn(3, 72, generator=g).to(dtype)
    torch.testing.assert_close(sg.linear(xs, w, out=many), F.linear(xs, w).float())
    for bad in (torch.empty(1, 50, dtype=torch.bfloat16), torch.empty(1, 49), torch.empty(50, 2).t()[:1]):
        with pytest.raises(ValueError, match="out must be a contiguous float32"):
            sg.linear_small_m(x, w, out=bad)
    with pytest.raises(ValueError, match="out= is for the plain M == 1 GEMV"):
        sg.linear_small_m(xs, w, out=torch.empty(3, 50))


def test_linear_dispatch_small_m_and_large_m():
    w = torch.randn(24, 40)
    for shape in [(1, 40), (2, 3, 40), (17, 40)]:  # skinny, skinny with leading dims, F.linear
        x = torch.randn(*shape)
        torch.testing.assert_close(sg.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-4)


def test_bad_inputs_raise_clear_errors():
    x, w = torch.randn(2, 8), torch.randn(8)
    with pytest.raises(ValueError, match="x \\[T, H\\]"):
        fk.rms_norm(x[0], w, 1e-5)
    with pytest.raises(ValueError, match="residual"):
        fk.rms_norm(x, w, 1e-5, residual=torch.randn(3, 8))
    with pytest.raises(ValueError, match="dtype"):
        fk.rms_norm(x.double(), w.double(), 1e-5)
    with pytest.raises(ValueError, match="contiguous"):
        fk.silu_mul(torch.randn(8, 4).t())
    with pytest.raises(ValueError, match="even width"):
        fk.silu_mul(torch.randn(2, 5))
    cache = fk.make_cos_sin_cache(ModelConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=1), 8)
    with pytest.raises(ValueError, match="qkv \\[T"):
        fk.rope_qk(torch.randn(2, 60), torch.tensor([0, 1]), cache, 2, 1, 16)
    with pytest.raises(ValueError, match="positions"):
        fk.rope_qk(torch.randn(2, 64), torch.tensor([0.0, 1.0]), cache, 2, 1, 16)
    with pytest.raises(ValueError, match="1..16"):
        sg.linear_small_m(torch.randn(17, 8), torch.randn(4, 8))
    with pytest.raises(ValueError, match="nn.Linear layout"):
        sg.linear_small_m(torch.randn(1, 8), torch.randn(8, 4))
    with pytest.raises(ValueError, match="dtype"):
        sg.linear_small_m(torch.randn(1, 8), torch.randn(4, 8).half())
    with pytest.raises(ValueError, match="norm_w \\[K\\]"):
        sg.norm_linear(torch.randn(1, 8), torch.randn(7), 1e-5, torch.randn(4, 8))
    with pytest.raises(ValueError, match="contiguous"):
        sg.norm_linear(torch.randn(8, 2).t(), torch.randn(8), 1e-5, torch.randn(4, 8))
    with pytest.raises(ValueError, match="even width"):
        sg.silu_mul_linear(torch.randn(1, 7), torch.randn(4, 3))
    with pytest.raises(ValueError, match="power of two"):  # D=12: rotation pairs would straddle the GEMM's tiles
        sg.norm_linear_rope(torch.randn(1, 8), torch.randn(8), 1e-5, torch.randn(48, 8), torch.tensor([0]),
                            torch.randn(4, 12), 2, 1, 12)
    with pytest.raises(ValueError, match="nn.Linear layout"):
        sg.silu_mul_linear(torch.randn(1, 8), torch.randn(4, 8))  # w must be [N, K] with K = 8 / 2


def test_cpu_tensors_without_interpreter_are_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA"):
        fk.silu_mul(torch.randn(2, 8))


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(2560, 2048), (2048, 5632), (32000, 2048), (1000, 200)])
@pytest.mark.parametrize("m", [1, 7, 16])
def test_gpu_skinny_gemms_at_model_shapes(n, k, m):
    g = torch.Generator(device="cuda").manual_seed(m + n)
    dev, bf = "cuda", torch.bfloat16
    w = (torch.randn(n, k, device=dev, generator=g) / k ** 0.5).to(bf)
    x, res = (torch.randn(m, k, device=dev, generator=g).to(bf) for _ in range(2))
    nw = (torch.randn(k, device=dev, generator=g) + 1).to(bf)
    torch.testing.assert_close(sg.linear_small_m(x, w).float(), F.linear(x.float(), w.float()), rtol=2e-2, atol=3e-2)
    out, r = sg.norm_linear(x, nw, 1e-5, w, res)
    y, r_want = fk.rms_norm_ref(x, nw, 1e-5, res)
    assert torch.equal(r, r_want)  # on the GPU the residual add rounds exactly as torch's does
    torch.testing.assert_close(out.float(), F.linear(y.float(), w.float()), rtol=2e-2, atol=3e-2)
    if n == 2560:  # the packed qkv of TinyLlama: 32 q + 4 k + 4 v heads of 64
        cache = fk.make_cos_sin_cache(ModelConfig(), 2048, dev)
        pos = torch.randint(0, 2048, (m,), device=dev, generator=g)
        qkv, r2 = sg.norm_linear_rope(x, nw, 1e-5, w, pos, cache, 32, 4, 64, res)
        assert torch.equal(r2, r_want)
        torch.testing.assert_close(qkv.float(), fk.rope_qk_ref(F.linear(y.float(), w.float()), pos, cache, 32, 4, 64),
                                   rtol=2e-2, atol=3e-2)
    if m == 1 and n % 2 == 0:  # the SiLU epilogue (w as a gate_up), and the persistent kernel on every prologue
        act, r3 = sg.norm_linear_silu(x, nw, 1e-5, w, res)
        gu_want, _ = sg.norm_linear(x, nw, 1e-5, w, res)
        assert torch.equal(act, fk.silu_mul(gu_want)) and torch.equal(r3, r_want)
        import os
        os.environ[sg.PERSISTENT_ENV] = "1"
        try:
            torch.testing.assert_close(sg.linear_small_m(x, w).float(), F.linear(x.float(), w.float()), rtol=2e-2,
                                       atol=3e-2)
            out_p, r4 = sg.norm_linear(x, nw, 1e-5, w, res)
            assert torch.equal(r4, r_want)
            torch.testing.assert_close(out_p.float(), F.linear(y.float(), w.float()), rtol=2e-2, atol=3e-2)
            act_p, _ = sg.norm_linear_silu(x, nw, 1e-5, w, res)
            torch.testing.assert_close(act_p.float(), act.float(), rtol=2e-2, atol=3e-2)
        finally:
            del os.environ[sg.PERSISTENT_ENV]
    if n <= 2048:  # w as the down projection: K is the intermediate size
        gu = torch.randn(m, 2 * k, device=dev, generator=g).to(bf)
        torch.testing.assert_close(sg.silu_mul_linear(gu, w).float(), F.linear(fk.silu_mul_ref(gu).float(), w.float()),
                                   rtol=2e-2, atol=3e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 5, 64])
def test_gpu_elementwise_kernels_at_model_shapes(t):
    dev, bf = "cuda", torch.bfloat16
    x, res = torch.randn(t, 2048, device=dev, dtype=bf), torch.randn(t, 2048, device=dev, dtype=bf)
    w = torch.randn(2048, device=dev, dtype=bf)
    (y, r), (y_ref, r_ref) = fk.rms_norm(x, w, 1e-5, res), fk.rms_norm_ref(x, w, 1e-5, res)
    assert torch.equal(r, r_ref)
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)
    gu = torch.randn(t, 2 * 5632, device=dev, dtype=bf)
    torch.testing.assert_close(fk.silu_mul(gu), fk.silu_mul_ref(gu), rtol=2e-2, atol=2e-2)
    cache = fk.make_cos_sin_cache(ModelConfig(), 2048, dev)
    qkv, pos = torch.randn(t, 40 * 64, device=dev, dtype=bf), torch.randint(0, 2048, (t,), device=dev)
    torch.testing.assert_close(fk.rope_qk(qkv.clone(), pos, cache, 32, 4, 64),
                               fk.rope_qk_ref(qkv, pos, cache, 32, 4, 64), rtol=2e-2, atol=2e-2)


COMPILE_FOR_H100 = r'''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from phase3_paged_fp8 import cache_write as cw, paged_decode as pd
from phase4_scheduler import fused_kernels as fk, skinny_gemm as sg

def compile_(fn, sig, consts, num_warps=4, num_stages=3):
    sig = {**sig, **{k: "constexpr" for k in consts}}
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": num_warps, "num_stages": num_stages})

bf, n = "*bf16", 0
PDL = dict(PDL=True)  # the decode path's kernels launch with programmatic dependent launch (griddepcontrol PTX)
compile_(fk.rms_norm_kernel, dict(x_ptr=bf, res_ptr=bf, w_ptr=bf, out_ptr=bf, res_out_ptr=bf, N="i32", stride_x="i32",
         stride_r="i32", stride_o="i32", stride_ro="i32", eps="fp32"), dict(HAS_RES=True, BLOCK=2048, **PDL), 8)
compile_(fk.silu_mul_kernel, dict(gu_ptr=bf, out_ptr=bf, I="i32", stride_g="i32", stride_o="i32"),
         dict(BLOCK=1024, **PDL))
compile_(fk.rope_qk_kernel, dict(qkv_ptr=bf, pos_ptr="*i64", cs_ptr="*fp32", stride_t="i32", stride_cs="i32"),
         dict(NUM_HEADS=36, H_PAD=64, HALF=32, **PDL))
compile_(pd.paged_decode_kernel, dict(q_ptr=bf, kc_ptr=bf, vc_ptr=bf, ks_ptr=bf, vs_ptr=bf, bt_ptr="*i32",
         lens_ptr="*i32", o_ptr=bf, po_ptr="*fp32", lse_ptr="*fp32", stride_qb="i32", stride_qh="i32", stride_bt="i32",
         stride_ob="i32", stride_oh="i32", sm_scale_log2="fp32", num_splits="i32", min_tps="i32"),
         dict(BS=16, HKV=4, G=8, G_PAD=16, D=64, BLOCK_D=64, BLOCK_N=32, SPLIT=True, QUANT=False, DOT_F32=False,
              PREC="tf32", **PDL), 4, 2)
compile_(pd.paged_decode_kernel, dict(q_ptr=bf, kc_ptr="*fp8e4nv", vc_ptr="*fp8e4nv", ks_ptr="*fp16", vs_ptr="*fp16",
         bt_ptr="*i32", lens_ptr="*i32", o_ptr=bf, po_ptr="*fp32", lse_ptr="*fp32", stride_qb="i32", stride_qh="i32",
         stride_bt="i32", stride_ob="i32", stride_oh="i32", sm_scale_log2="fp32", num_splits="i32", min_tps="i32"),
         dict(BS=16, HKV=4, G=8, G_PAD=16, D=64, BLOCK_D=64, BLOCK_N=64, SPLIT=False, QUANT=True, DOT_F32=False,
              PREC="tf32", **PDL), 2, 3)
compile_(pd.paged_decode_reduce_kernel, dict(po_ptr="*fp32", lse_ptr="*fp32", o_ptr=bf, stride_ob="i32",
         stride_oh="i32"), dict(HQ=32, NUM_SPLITS=16, SPLITS_PAD=16, D=64, BLOCK_D=64, **PDL))
compile_(cw.write_kv_cache_kernel, dict(k_ptr=bf, v_ptr=bf, slot_ptr="*i64", kc_ptr=bf, vc_ptr=bf, ks_ptr=bf,
         vs_ptr=bf, stride_kt="i32", stride_kh="i32", stride_vt="i32", stride_vh="i32"),
         dict(H=4, D=64, BLOCK_H=4, BLOCK_D=64, QUANT=False, **PDL))
n += 7
from phase4_scheduler import decode_attention as da
for g, gpad, gr, split, rope, bn, pre in [(8, 16, 8, True, True, 32, True), (3, 16, 4, True, False, 64, True),
                                          (8, 16, 8, False, True, 64, False)]:
    compile_(da.decode_attention_kernel, dict(q_ptr=bf, k_ptr=bf, v_ptr=bf, pos_ptr="*i64", cs_ptr="*fp32",
             slot_ptr="*i64", kc_ptr=bf, vc_ptr=bf, bt_ptr="*i32", lens_ptr="*i32", o_ptr=bf, po_ptr="*fp32",
             lse_ptr="*fp32", cnt_ptr="*i32", stride_qt="i32", stride_qh="i32", stride_kt="i32", stride_kh="i32",
             stride_vt="i32", stride_vh="i32", stride_cs="i32", stride_bt="i32", stride_ot="i32", stride_oh="i32",
             sm_scale_log2="fp32", num_splits="i32", min_tps="i32"),
             dict(BS=16, HKV=4, G=g, G_PAD=gpad, GR=gr, HALF=32, BLOCK_N=bn, SPLIT=split, S_PAD=16, S_CHUNK=8,
                  ROPE=rope, PREFETCH=pre, DOT_F32=False, PREC="tf32", **PDL), 4, 2)
    n += 1
ptrs = dict(x_ptr=bf, r_ptr=bf, nw_ptr=bf, ro_ptr=bf, w_ptr=bf, out_ptr=bf, pos_ptr="*i64", cs_ptr="*fp32")
for mode, rope, k in [(0, False, 2048), (1, False, 2048), (2, False, 5632), (1, True, 2048)]:
    flags = dict(K=k, MODE=mode, HAS_RES=True, ROPE=rope, HALF=32)
    compile_(sg.skinny_gemv_kernel, {**ptrs, **dict(N="i32", stride_wn="i32", eps="fp32", stride_cs="i32",
             ROPE_ROWS="i32")}, {**flags, "BLOCK_N": 4, "BLOCK_K": 1024, "PREFETCH_BYTES": 4096 if mode else 0,
                                 "SILU": False, **PDL})
    if not rope:  # the persistent kernel, and (gate_up's shape) the SiLU epilogue
        persistent = {k_: v for k_, v in ptrs.items() if k_ not in ("pos_ptr", "cs_ptr")}
        for silu, n_rows, bk in [(False, 2048, 2048), (mode == 1, 11264, 1024)]:
            compile_(sg.skinny_gemv_persistent_kernel, {**persistent, **dict(stride_wn="i32", eps="fp32")},
                     dict(N=n_rows, NUM_SMS=132, K=k, MODE=mode, HAS_RES=True, SILU=silu, HALF=n_rows // 2,
                          BLOCK_N=4, BLOCK_K=bk, PPS=4, **PDL), 8)
            n += 1
        if mode == 1:
            compile_(sg.skinny_gemv_kernel, {**ptrs, **dict(N="i32", stride_wn="i32", eps="fp32", stride_cs="i32",
                     ROPE_ROWS="i32")}, {**flags, "HALF": 5632, "SILU": True, "BLOCK_N": 4, "BLOCK_K": 2048,
                                         "PREFETCH_BYTES": 0, **PDL},
                     8)
            n += 1
    compile_(sg.skinny_gemm_kernel, {**ptrs, **dict(M="i32", N="i32", stride_xm="i32", stride_wn="i32", stride_om="i32",
             eps="fp32", stride_cs="i32", ROPE_ROWS="i32")},
             {**flags, "BLOCK_N": 32, "BLOCK_K": 256, "M_PAD": 16, "DOT_F32": False, "PREC": "tf32"})
    n += 2
print("compiled", n)
'''


def test_kernels_compile_for_the_h100():
    """Every kernel variant the fused model launches (with PDL, as the decode path launches them on a Hopper GPU)
    goes through Triton's full sm_90 pipeline (TTIR -> PTX -> ptxas cubin) on this CPU machine, so a GPU-only
    code-generation error fails here, not on the device."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # real JIT functions (phase 3's import would pick the interpreter)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = subprocess.run([sys.executable, "-c", COMPILE_FOR_H100], env=env, cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "compiled 25" in run.stdout
