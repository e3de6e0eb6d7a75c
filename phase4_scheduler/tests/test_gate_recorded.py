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
        # a quote naming its file, or says none exists (a non-empty string alone proved nothing: every branch is one)
        text = c.recorded()
        assert "results/" in text or text == "no GPU run recorded yet", (c.name, text)


def test_equal_latency_criterion_reads_its_own_file(gpu_criteria):
    c = gpu_criteria["continuous vs static at equal p50 latency, ShareGPT, Poisson"]
    r = load_result(PHASE, gate.EQUAL_RECORD)
    text = c.recorded()
    if r is None:
        assert "no GPU run recorded" in text
    else:
        assert f"{r['summary']['continuous_over_static_at_equal_p50']:.2f}x" in text


def test_b1_quotes_the_json_and_its_verdict(gpu_criteria):
    r = load_result(PHASE, gate.B1_RECORD)
    if r is None:
        pytest.skip(f"{gate.B1_RECORD}.json not recorded")
    text = gpu_criteria["B=1 decode, TinyLlama-1.1B shapes"].recorded()
    v = gate._b1(r)
    assert f"{v['engine_ms_per_token']:.2f} ms/token" in text and "sync" not in v["variant"]
    share = v["roofline_ms"] / v["engine_ms_per_token"]
    assert f"{share:.0%} of the weight roofline" in text
    assert ("meets the threshold" if share >= 0.8 else "MISSES the threshold") in text


def test_b1_record_picks_the_overlapped_row_and_names_the_sync_one():
    r = {"variants": [{"variant": "graph+fused+sync", "engine_ms_per_token": 1.5, "forward_ms_median": 1.3,
                       "roofline_ms": 0.7},
                      {"variant": "graph+fused", "engine_ms_per_token": 0.9, "forward_ms_median": 0.85,
                       "roofline_ms": 0.7}]}
    text = gate._b1_record(r)
    assert text.startswith("0.90 ms/token = 78% of the weight roofline 0.70 ms (graph+fused;")
    assert "same run: 1.50 graph+fused+sync" in text


def test_equal_latency_record_shows_each_bracket():
    r = {"comparison": [{"target": "static_best", "baseline": "static", "ratio": 1.5, "ratio_low": 1.2,
                         "ratio_high": None, "target_p50_s": 1.7},
                        {"target": "given", "baseline": "static", "ratio": 9.0, "ratio_low": 1, "ratio_high": 2,
                         "target_p50_s": 1.0}]}
    assert gate._equal_record(r) == ("vs static: 1.50x (bracket 1.20..inf) at p50 <= 1.70 s "
                                     "(at p50 targets 1.00 s: 9.00x)")
    r["comparison"][1]["ratio"] = None  # static meets that target at no swept rate
    assert gate._equal_record(r).endswith("(at p50 targets 1.00 s: none)")
    assert gate._equal_record({"comparison": r["comparison"][:1]}) == ("vs static: 1.50x (bracket 1.20..inf) at "
                                                                      "p50 <= 1.70 s")
    assert "no ratio" in gate._equal_record({"comparison": []})


def test_vllm_comparison_is_computed_from_the_files():
    rs = {n: load_result(PHASE, n) for n in gate._vllm_vs_ours.names}
    if any(r is None for r in rs.values()):
        pytest.skip("vLLM / latency / offline results not recorded")
    v, lat, o = rs.values()
    text = gate._vllm_vs_ours(rs)
    assert f"{v['b1_ms_per_token'] / gate._b1(lat)['engine_ms_per_token']:.2f}x faster at B=1" in text
    assert f"{o['rows'][0]['output_tokens_per_s'] / v['offline_1024x128x128']['out_tok_per_s']:.2f}x offline" in text
    out = gate.check_vllm()
    assert out.passed is None and "recorded" in out.reason  # skipped, never passed from a file


def test_missing_files_are_named():
    from phase4_scheduler.gate import _rec_plain

    def describe(rs):
        return "unused"
    describe.names = ("no_such_result",)
    assert "results/no_such_result.json missing" in _rec_plain(describe)()


def test_hf_criterion_fails_when_the_summary_lacks_a_figure(monkeypatch):
    """check_hf's verdict used to be `"hf_b64_output_tok_s" in s` after the message had already read that key: it
    could only crash or pass. Now a summary without a figure is a FAIL that names it (bench stubbed)."""
    from phase4_scheduler import bench_offline

    full = {"hf_b1_ms_per_step": 30.0, "hf_b64_output_tok_s": 2000.0, "b1_speedup_vs_hf": 12.0, "b1_ms_per_token": 2.5}
    monkeypatch.setattr(bench_offline, "main", lambda argv: {"summary": full})
    out = gate.check_hf()
    assert out.passed is True and out.measured == "HF B=1 30.0 ms/step, B=64 2,000 tok/s; ours 12.0x at B=1", out
    for key in ("hf_b1_ms_per_step", "hf_b64_output_tok_s", "b1_speedup_vs_hf"):
        monkeypatch.setattr(bench_offline, "main", lambda argv, k=key: {"summary": {x: v for x, v in full.items()
                                                                                    if x != k}})
        out = gate.check_hf()
        assert out.passed is False and key in out.reason, (key, out)
