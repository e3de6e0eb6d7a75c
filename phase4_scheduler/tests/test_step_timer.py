"""step_timer: GPU time per kind of step. The runner's classification is checked on the CPU with a recording timer
(CUDA events need a GPU); the event arithmetic on the GPU."""
import pytest
import torch

from phase4_scheduler.step_timer import StepTimer, step_timing_enabled


class Recorder:
    def __init__(self):
        self.kinds = []

    def begin(self):
        return object()

    def end(self, kind, start):
        self.kinds.append(kind)

    def totals(self):
        return {f"{k}_timed_steps": self.kinds.count(k) for k in set(self.kinds)}


def test_off_on_cpu_and_by_default(monkeypatch):
    monkeypatch.setenv("TITAN_STEP_TIMING", "1")
    assert not step_timing_enabled(torch.device("cpu"))
    monkeypatch.setenv("TITAN_STEP_TIMING", "0")
    assert not step_timing_enabled(torch.device("cuda"))
    monkeypatch.delenv("TITAN_STEP_TIMING")
    assert not step_timing_enabled(torch.device("cuda"))
    monkeypatch.setenv("TITAN_STEP_TIMING", "1")
    assert step_timing_enabled(torch.device("cuda"))


def test_runner_times_each_step_under_its_kind(tiny):
    """Eager steps (no graphs on the CPU) are timed as "eager", one per execute; step_shapes reports the totals."""
    from common.sampling import SamplingParams
    from phase4_scheduler.engine import LLMEngine

    eng = LLMEngine(tiny, num_blocks=32, block_size=16, detokenize=False)
    eng.runner.step_timer = rec = Recorder()
    eng.add_request("a", [1, 2, 3, 4], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    while eng.has_unfinished():
        eng.step()
    assert rec.kinds == ["eager"] * 3  # one prefill, two decodes
    assert eng.runner.step_shapes()["eager_timed_steps"] == 3


@pytest.mark.gpu
def test_gpu_step_timer_sums_event_spans():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    t = StepTimer()
    a = torch.randn(4096, 4096, device="cuda")
    a @ a  # cuBLAS's first call out of the timed spans
    torch.cuda.synchronize()
    for kind in ("decode_graph", "mixed_graph", "mixed_graph"):
        s = t.begin()
        a @ a
        t.end(kind, s)
    got = t.totals()
    assert got["decode_graph_timed_steps"] == 1 and got["mixed_graph_timed_steps"] == 2
    assert got["decode_graph_gpu_ms"] > 0 and got["mixed_graph_gpu_ms"] > got["decode_graph_gpu_ms"] * 1.2
    assert not t.pending
