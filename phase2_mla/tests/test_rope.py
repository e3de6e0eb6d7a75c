"""RoPE kernels (Triton under the interpreter on CPU, CUDA C on GPU) against the PyTorch reference and the models'."""
import shutil

import pytest
import torch

from common.deepseek import apply_rope_interleaved
from common.llama import apply_rope
from phase2_mla.rope import LAYOUTS, cos_sin_cache, rope_, rope_ref

IMPLS = ["triton", pytest.param("cuda", marks=pytest.mark.gpu)]
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _impl(name):
    if name == "cuda":
        from phase2_mla.rope_cuda import rope_cuda_
        return rope_cuda_
    return rope_


def _case(t, hq, hk, r, width, dtype, seed, device=DEV, max_pos=300):
    g = torch.Generator().manual_seed(seed)
    qfull = torch.randn(t, hq, width, generator=g).to(device, dtype)
    k = torch.randn(t, hk, r, generator=g).to(device, dtype)
    inv = 1.0 / (10000 ** (torch.arange(0, r, 2, dtype=torch.float32) / r))
    cos, sin = cos_sin_cache(inv, max_pos, scaling=1.1, device=device)
    pos = torch.randint(0, max_pos, (t,), generator=g).to(device)
    return qfull, qfull[..., width - r:], k, cos, sin, pos


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(5, 3, 2, 12, 12), (7, 4, 1, 16, 40), (1, 2, 2, 6, 6)],
                         ids=["awkward-half-6", "rope-slice-of-wider-head", "single-token"])
def test_rope_matches_reference(impl, layout, dtype, shape):
    t, hq, hk, r, width = shape
    qfull, q, k, cos, sin, pos = _case(t, hq, hk, r, width, dtype, seed=hash((layout, shape)) % 1000)
    untouched = qfull[..., :width - r].clone()
    rq, rk = rope_ref(q, k, cos, sin, pos, layout)
    out_q, out_k = _impl(impl)(q, k, cos, sin, pos, layout)
    assert out_q.data_ptr() == q.data_ptr() and out_k.data_ptr() == k.data_ptr()  # in place
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(q, rq, **tol)
    torch.testing.assert_close(k, rk, **tol)
    assert torch.equal(qfull[..., :width - r], untouched), "the kernel wrote outside the rope slice"


def test_reference_half_layout_is_llamas_rotate_half():
    _, q, k, cos, sin, pos = _case(6, 3, 3, 16, 16, torch.float32, seed=1, device="cpu")
    rq, _ = rope_ref(q, k, cos, sin, pos, "half")
    c2, s2 = torch.cat((cos[pos], cos[pos]), -1)[None], torch.cat((sin[pos], sin[pos]), -1)[None]  # [1, T, R]
    expect = apply_rope(q.transpose(0, 1)[None], c2, s2)[0].transpose(0, 1)
    torch.testing.assert_close(rq, expect)


def test_reference_interleaved_layout_is_the_deepseek_models():
    _, q, k, cos, sin, pos = _case(6, 3, 3, 16, 16, torch.float32, seed=2, device="cpu")
    rq, _ = rope_ref(q, k, cos, sin, pos, "interleaved")
    expect = apply_rope_interleaved(q.transpose(0, 1)[None], cos[pos][None], sin[pos][None])[0].transpose(0, 1)
    torch.testing.assert_close(rq, expect)


def test_layouts_differ_so_the_flag_matters():
    _, q, k, cos, sin, pos = _case(4, 2, 2, 8, 8, torch.float32, seed=3, device="cpu")
    a, _ = rope_ref(q, k, cos, sin, pos, "half")
    b, _ = rope_ref(q, k, cos, sin, pos, "interleaved")
    assert (a - b).abs().max() > 1e-2


@pytest.mark.parametrize("bad, msg", [
    (dict(layout="neox"), "layout"),
    (dict(q=lambda q: q.float()), "dtype"),
    (dict(q=lambda q: q[..., :7]), "agree"),
    (dict(q=lambda q: q.transpose(1, 2).contiguous().transpose(1, 2)), "contiguous"),
    (dict(pos=lambda p: p + 1000), "positions must lie"),
    (dict(pos=lambda p: p.int()), "int64"),
    (dict(cos=lambda c: c[:, :3]), "cos and sin"),
    (dict(cos=lambda c: c.double()), "float32"),
    (dict(q=lambda q: q[:, :, None]), "tokens, heads, rot_dim"),
])
def test_bad_arguments_raise_clear_errors(bad, msg):
    _, q, k, cos, sin, pos = _case(3, 2, 2, 8, 8, torch.bfloat16, seed=4, device="cpu")
    q = bad.get("q", lambda x: x)(q)
    cos = bad.get("cos", lambda x: x)(cos)
    pos = bad.get("pos", lambda x: x)(pos)
    with pytest.raises(ValueError, match=msg):
        rope_(q, k, cos, sin, pos, bad.get("layout", "half"))


def test_odd_rot_dim_raises():
    q, k = torch.randn(2, 1, 7), torch.randn(2, 1, 7)
    with pytest.raises(ValueError, match="even"):
        rope_(q, k, torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(2, dtype=torch.long))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed (the CUDA toolkit compiles the .cu)")
def test_cuda_kernel_compiles_with_nvcc(tmp_path):
    from phase2_mla.rope_cuda import build

    so = build("sm_90", out_dir=tmp_path)
    assert so.exists() and so.stat().st_size > 10_000
    assert b"titan_rope_inplace" in so.read_bytes()


def test_cuda_wrapper_refuses_cpu_tensors():
    from phase2_mla.rope_cuda import rope_cuda_

    _, q, k, cos, sin, pos = _case(3, 2, 2, 8, 8, torch.float32, seed=5, device="cpu")
    with pytest.raises(ValueError, match="CUDA"):
        rope_cuda_(q, k, cos, sin, pos)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_vector_paths_at_real_shapes(layout, dtype):
    """Aligned shapes take the 16-byte vector path; one misaligned slice forces the scalar path."""
    from phase2_mla.rope_cuda import rope_cuda_

    for t, hq, hk, r, width in [(37, 32, 8, 128, 128), (9, 16, 1, 64, 192), (5, 3, 1, 64, 67)]:
        qfull, q, k, cos, sin, pos = _case(t, hq, hk, r, width, dtype, seed=t, max_pos=4096)
        rq, rk = rope_ref(q, k, cos, sin, pos, layout)
        rope_cuda_(q, k, cos, sin, pos, layout)
        tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(q, rq, **tol)
        torch.testing.assert_close(k, rk, **tol)
