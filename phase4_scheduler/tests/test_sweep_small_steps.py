"""sweep_small_steps: every configuration it times is checked against the default's output first (so a knob that
changes the result stops the sweep), and the summary picks the fastest. CPU: the plumbing under the interpreter with a
stub timer; the GPU run is the measurement."""
import pytest
import torch

from phase4_scheduler import sweep_small_steps as sss


@pytest.fixture
def cpu_stub(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CPU plumbing test (the GPU run is the measurement)")
    calls = []

    def fake_graph_us(fn, layers):
        fn(0)
        calls.append(layers)
        return 10.0 + len(calls)  # later configurations "slower": the first timed one must be the best

    monkeypatch.setattr(sss, "DEV", "cpu")
    monkeypatch.setattr(sss.bda, "graph_us", fake_graph_us)
    return calls


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_decode_sweep_checks_every_config_and_picks_the_fastest(cpu_stub, fp8):
    r = sss.sweep_decode("3x40", fp8, 1, [(16, 2, 2), (32, 4, 2)], [1, 3])
    assert len(r["timings_us"]) == 4 and len(cpu_stub) == 5  # the default + four configurations
    assert r["best"] == "16x2x2/s1" and r["best_us"] == 12.0 and r["default_us"] == 11.0
    assert r["kv_cache_dtype"] == ("fp8" if fp8 else "bf16") and r["kernel"] == "decode_attention"


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_prefill_sweep_checks_every_config(cpu_stub, fp8):
    r = sss.sweep_mixed("3x20+1x9", fp8, 1, [(16, 4, 1), (32, 4, 2)])
    assert set(r["timings_us"]) == {"16x4x1", "32x4x2"} and r["kernel"] == "paged_prefill"


def test_a_config_that_changes_the_output_stops_the_sweep(cpu_stub, monkeypatch):
    real = sss.decode_attention

    def wrong_with_knobs(*a, **kw):
        out = real(*a, **kw)
        return out + 1.0 if "num_splits" in kw else out

    monkeypatch.setattr(sss, "decode_attention", wrong_with_knobs)
    with pytest.raises(AssertionError, match="differs from the default"):
        sss.sweep_decode("2x20", False, 1, [(16, 2, 2)], [1])


def test_needs_cuda_on_the_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU only")
    with pytest.raises(SystemExit, match="needs CUDA"):
        sss.main(["--quick"])


def test_a_config_that_cannot_launch_is_recorded_not_fatal(cpu_stub, monkeypatch):
    real = sss.decode_attention

    def no_room_for_32(*a, **kw):
        if kw.get("block_n") == 32:
            raise RuntimeError("out of resource: shared memory")
        return real(*a, **kw)

    monkeypatch.setattr(sss, "decode_attention", no_room_for_32)
    r = sss.sweep_decode("2x20", False, 1, [(16, 2, 2), (32, 4, 2)], [1])
    assert r["timings_us"]["32x4x2/s1"].startswith("RuntimeError") and r["best"] == "16x2x2/s1"
