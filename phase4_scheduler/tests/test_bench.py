"""The benchmark scripts run end to end at toy sizes and compute their statistics correctly."""
import numpy as np
import pytest

from phase4_scheduler import bench_offline, bench_serve


def test_bench_offline_toy_run_writes_results(tmp_path, monkeypatch):
    monkeypatch.setenv("TITAN_RESULTS_DIR", str(tmp_path))
    out = bench_offline.main(["--model", "tinyllama-1.1b", "--random-weights", "--num-layers", "1", "--device", "cpu",
                              "--num-prompts", "6", "--input-len", "5", "--output-len", "4", "--max-num-seqs", "4",
                              "--compare-static", "--name", "toy"])
    assert (tmp_path / "toy.json").exists()
    cont, stat = out["rows"]
    assert cont["output_tokens"] == stat["output_tokens"] == 24
    assert cont["output_tokens_per_s"] > 0 and stat["label"] == "static"


def test_serve_summary_percentiles():
    results = [{"ok": True, "ttft": t, "e2e": t + 1.0, "output_tokens": 11, "itl": [0.1] * 10, "tpot": 0.1}
               for t in (0.1, 0.2, 0.3, 0.4)] + [{"ok": False, "error": "HTTP 400: x"}]
    s = bench_serve.summarize(results, [("p", 5, 11)] * 5, wall=2.0)
    assert s["completed"] == 4 and s["failed"] == 1 and s["errors"] == ["HTTP 400: x"]
    assert np.isclose(s["ttft_ms"]["p50"], 250.0) and np.isclose(s["tpot_ms"]["p99"], 100.0)
    assert np.isclose(s["output_token_throughput"], 44 / 2.0) and s["total_input_tokens"] == 25


def test_titan_bench_dispatches_to_the_scripts(capsys):
    import pytest

    from common.cli import main as titan

    with pytest.raises(SystemExit) as e:
        titan(["bench", "serve", "--help"])
    assert e.value.code == 0 and "--request-rate" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        titan(["bench", "offline", "--help"])
    assert e.value.code == 0 and "--compare-static" in capsys.readouterr().out


@pytest.mark.parametrize("main, argv, words", [
    (bench_offline.main, ["--num-prompts", "0"], "argument --num-prompts: must be an integer >= 1, got 0"),
    (bench_offline.main, ["--input-len", "-1"], "argument --input-len: must be an integer >= 1, got -1"),
    (bench_serve.main, ["--num-prompts", "-1"], "argument --num-prompts: must be an integer >= 1, got -1"),
    (bench_serve.main, ["--request-rate", "-5"], "argument --request-rate: must be a number > 0 (or inf), got -5"),
])
def test_bench_counts_and_rates_are_checked_up_front(main, argv, words, capsys):
    """0 prompts ran an empty job and wrote a results file of 0 tok/s; a negative length crashed inside torch; a
    negative count read the whole dataset; a negative rate failed in numpy: all usage errors now, before any work."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and words in capsys.readouterr().err
