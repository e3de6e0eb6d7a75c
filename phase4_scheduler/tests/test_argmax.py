"""greedy_argmax (Triton, under the CPU interpreter here) returns torch.argmax's index: ties, NaN, -inf, chunking."""
import pytest
import torch

from phase4_scheduler import argmax as am


@pytest.mark.parametrize("chunk", [64, 32768])  # 64: several chunks, unrolled or looped; 32768: the GPU's one chunk
@pytest.mark.parametrize("b,v", [(1, 100), (3, 64), (2, 1000), (4, 37)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_argmax_is_torch_argmax(monkeypatch, chunk, b, v, dtype):
    monkeypatch.setattr(am, "CHUNK", chunk)
    g = torch.Generator().manual_seed(b * v + chunk)
    ties = torch.randint(-3, 3, (b, v), generator=g).to(dtype)  # many equal maxima: the first index must win
    assert torch.equal(am.greedy_argmax(ties), ties.argmax(-1))
    x = torch.randn(b, v, generator=g).to(dtype)
    assert torch.equal(am.greedy_argmax(x), x.argmax(-1))
    strided = torch.randn(b, 2 * v, generator=g).to(dtype)[:, ::2]  # a non-contiguous row
    assert torch.equal(am.greedy_argmax(strided), strided.argmax(-1))


def test_nan_and_minus_inf_rows_like_torch(monkeypatch):
    monkeypatch.setattr(am, "CHUNK", 64)
    x = torch.randn(3, 150)
    x[0] = float("-inf")  # all -inf: index 0
    x[1, 70] = x[1, 120] = float("nan")  # NaN is the largest: its first index
    x[2, 3] = x[2, 140] = 1e30
    assert torch.equal(am.greedy_argmax(x), x.argmax(-1))
    assert am.greedy_argmax(x).tolist() == [0, 70, 3]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"logits \[B, V\]"):
        am.greedy_argmax(torch.randn(5))
    with pytest.raises(ValueError, match="float logits"):
        am.greedy_argmax(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="empty vocabulary"):
        am.greedy_argmax(torch.randn(2, 0))
    assert am.greedy_argmax(torch.randn(0, 7)).shape == (0,)


def test_greedy_argmax_into_given_buffers(monkeypatch):
    """out= is written and returned; host_out= (a pinned host buffer on the GPU: graph_io.py) gets the same ids."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.randn(3, 1000, generator=torch.Generator().manual_seed(1))
    out, host = torch.full((3,), -1, dtype=torch.long), torch.full((3,), -1, dtype=torch.long)
    got = am.greedy_argmax(x, out=out, host_out=host)
    assert got.data_ptr() == out.data_ptr() and torch.equal(out, x.argmax(-1)) and torch.equal(host, out)
    with pytest.raises(ValueError, match="int64"):
        am.greedy_argmax(x, out=torch.empty(3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\[3\]"):
        am.greedy_argmax(x, host_out=torch.empty(4, dtype=torch.long))


def test_greedy_argmax_out_without_the_kernel(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors, no interpreter: torch.argmax into out
    x = torch.randn(2, 50, generator=torch.Generator().manual_seed(2))
    out = torch.empty(2, dtype=torch.long)
    assert am.greedy_argmax(x, out=out).data_ptr() == out.data_ptr() and torch.equal(out, x.argmax(-1))
    with pytest.raises(ValueError, match="host_out needs the kernel"):
        am.greedy_argmax(x, host_out=torch.empty(2, dtype=torch.long))


@pytest.mark.gpu
@pytest.mark.parametrize("b,v", [(1, 32000), (7, 32000), (64, 49152), (3, 128256)])
def test_gpu_greedy_argmax_at_vocab_sizes(b, v):
    g = torch.Generator(device="cuda").manual_seed(b + v)
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(b, v, device="cuda", generator=g).to(dtype)
        assert torch.equal(am.greedy_argmax(x), x.argmax(-1))
        x = torch.randint(-2, 2, (b, v), device="cuda", generator=g).to(dtype)
        assert torch.equal(am.greedy_argmax(x), x.argmax(-1))


@pytest.mark.parametrize("v", [32000, 128256, 262144])  # one chunk / 4 unrolled / 8 looped
def test_argmax_compiles_for_the_h100_without_spills(v):
    pytest.importorskip("triton.backends.nvidia.compiler")
    from common.ptxas import hopper_resources_subprocess

    n = -(-v // am.CHUNK)
    r = hopper_resources_subprocess(
        "phase4_scheduler.argmax", "argmax_kernel",
        dict(x_ptr="*bf16", out_ptr="*i64", host_ptr="*i64", V="i32", stride_x="i32"),
        dict(CHUNK=am.CHUNK, NCHUNK=n, UNROLL=n <= am.UNROLL_CHUNKS, HOST=True, PDL=True), am.warps_for(am.CHUNK), 3,
        divisible=["x_ptr"])
    assert not r["ptxas_error"] and r["spill_store_bytes"] == 0 and r["registers"] <= 128, r
