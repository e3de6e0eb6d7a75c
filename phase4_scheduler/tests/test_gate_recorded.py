"""The phase-4 gate's GPU criteria quote results/*.json (never typed-in figures) and say whether the target is met;
the vLLM comparison never PASSes from a file."""
import pytest

from common.bench import load_result
from phase4_scheduler import gate

PHASE = "phase4_scheduler"


@pytest.fixture(scope="module")
def gpu_criteria():
    return {c.name: c for c in gate.criteria() if c.needs_cuda}


def test_every_gpu_criterion_quotes_a_record(gpu_criteria):
    assert len(gpu_criteria) == 6
    for c in gpu_criteria.values():
        assert c.recorded is not None and c.recorded()  # a quote, or "no GPU run recorded yet" where none exists


def test_equal_latency_criterion_reads_its_own_file(gpu_criteria):
    c = gpu_criteria["continuous vs static at equal p50 latency, ShareGPT, Poisson (H100)"]
    r = load_result(PHASE, "equal_latency_gpu")
    text = c.recorded()
    if r is None:
        assert "no GPU run recorded" in text
    else:
        assert f"{r['summary']['continuous_over_static_at_equal_p50']:.2f}x" in text


def test_b1_quotes_the_json_and_its_verdict(gpu_criteria):
    r = load_result(PHASE, "offline_gpu_1024")
    if r is None:
        pytest.skip("offline_gpu_1024.json not recorded")
    text = gpu_criteria["B=1 decode, TinyLlama-1.1B shapes (H100)"].recorded()
    ms = r["latency"]["ms_per_token"]
    assert f"{ms:.2f} ms/token" in text
    assert ("meets the threshold" if ms <= 0.92 else "MISSES the threshold") in text


def test_vllm_comparison_is_computed_from_both_files():
    v, o = load_result(PHASE, "vllm_tinyllama_gpu"), load_result(PHASE, "offline_gpu_1024")
    if v is None or o is None:
        pytest.skip("vLLM / offline results not recorded")
    text = gate._vllm_vs_ours({"vllm_tinyllama_gpu": v, "offline_gpu_1024": o})
    assert f"{v['b1_ms_per_token'] / o['latency']['ms_per_token']:.2f}x faster at B=1" in text
    out = gate.check_vllm()
    assert out.passed is None and "recorded" in out.reason  # skipped, never passed from a file


def test_missing_files_are_named():
    from phase4_scheduler.gate import _rec_plain

    def describe(rs):
        return "unused"
    describe.names = ("no_such_result",)
    assert "results/no_such_result.json missing" in _rec_plain(describe)()
