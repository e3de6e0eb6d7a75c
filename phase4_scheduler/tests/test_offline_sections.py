"""bench_offline's extra sections (B=1 latency, HF baseline, summary) run end to end at toy sizes on the CPU, and a
failing section is recorded without losing the others."""
import pytest

from phase4_scheduler import bench_offline

TOY = ["--model", "smollm2-135m", "--random-weights", "--num-layers", "1", "--device", "cpu", "--num-prompts", "3",
       "--input-len", "5", "--output-len", "3", "--max-num-seqs", "2", "--no-warmup"]


def test_latency_hf_and_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("TITAN_RESULTS_DIR", str(tmp_path))
    out = bench_offline.main(TOY + ["--latency", "--latency-prompt", "4", "--latency-tokens", "3", "--hf",
                                    "--hf-batch", "1", "2", "--hf-tokens", "2", "--name", "toy_sections"])
    assert (tmp_path / "toy_sections.json").exists() and not out["errors"]
    assert out["latency"]["output_tokens"] == 3 and out["latency"]["ms_per_token"] > 0
    assert [r["batch"] for r in out["hf"]] == [1, 2] and all(r["ms_per_step"] > 0 for r in out["hf"])
    s = out["summary"]
    assert s["b1_speedup_vs_hf"] == pytest.approx(out["hf"][0]["ms_per_step"] / out["latency"]["ms_per_token"])
    assert s["continuous_output_tok_s"] == out["rows"][0]["output_tokens_per_s"]


def test_a_failing_section_is_recorded_and_the_rest_still_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TITAN_RESULTS_DIR", str(tmp_path))

    def boom(*a, **k):
        raise RuntimeError("no GPU today")
    monkeypatch.setattr(bench_offline, "static_engine", boom)
    out = bench_offline.main(TOY + ["--compare-static", "--name", "toy_fail"])
    assert "no GPU today" in out["errors"]["static"]
    assert [r["label"] for r in out["rows"]] == ["continuous"] and (tmp_path / "toy_fail.json").exists()
