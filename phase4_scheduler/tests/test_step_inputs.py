"""step_inputs.to_device: a step's host inputs reach the GPU in one pinned copy, without a stream sync."""
import pytest
import torch
def test_pack_bytes_round_trip():
    """to_device's one-buffer layout: mixed dtypes and shapes (empty, 2-D, odd byte counts) view back exactly."""
    from phase4_scheduler.step_inputs import pack_bytes, unpack_bytes

    ts = [torch.arange(5, dtype=torch.int64), torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.int32),
          torch.empty(0, dtype=torch.int64), torch.tensor([7, 8, 9], dtype=torch.int32), torch.tensor([-1.5])]
    buf, offsets = pack_bytes(ts)
    assert buf.dtype == torch.uint8 and all(o % 8 == 0 for o in offsets)
    back = unpack_bytes(buf.clone(), ts, offsets)
    for a, b in zip(ts, back):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_to_device_is_the_identity_on_the_cpu():
    from phase4_scheduler.step_inputs import to_device

    t = torch.arange(3)
    assert to_device(torch.device("cpu"), t)[0] is t


@pytest.mark.gpu
def test_gpu_to_device_copies_exactly():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from phase4_scheduler.step_inputs import to_device

    ts = [torch.arange(1000, dtype=torch.int64), torch.randint(0, 99, (17, 33), dtype=torch.int32)]
    got = to_device(torch.device("cuda"), *ts)
    assert all(g.is_cuda and torch.equal(g.cpu(), t) for g, t in zip(got, ts))
