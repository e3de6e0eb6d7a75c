"""plots.py draws the recorded results: every bar is the JSON's figure, and a missing result is a clear KeyError."""
import json

import pytest

from common.report import load_results
from phase4_scheduler import plots
from phase4_scheduler.plots import PHASE_DIR


@pytest.fixture(scope="module")
def results():
    return load_results(PHASE_DIR)


def test_each_plot_draws_the_json_figures(results, tmp_path):
    drawn = plots.main(["--out", str(tmp_path)])
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) == len(drawn) and all((tmp_path / p).stat().st_size > 10_000 for p in pngs)
    if "plot_b1" in drawn:
        b1 = drawn["plot_b1"]
        assert b1["ours graph+fused (LLMEngine)"] == results["offline_gpu_1024"]["latency"]["ms_per_token"]
        assert b1["vLLM " + results["vllm_tinyllama_gpu"]["vllm"]] == results["vllm_tinyllama_gpu"]["b1_ms_per_token"]
    if "plot_b1" in drawn and "latency_overlap_gpu" in results:
        for v in results["latency_overlap_gpu"]["variants"]:  # overlapped engine and its overlap-off row
            key = f"ours {v['variant']}, overlap {'on' if v['overlap'] else 'off'}"
            assert drawn["plot_b1"][key] == v["engine_ms_per_token"]
    if "plot_b1_history" in drawn:
        for stem, label in plots.B1_HISTORY:
            v = results[stem]["variants"][0]
            assert drawn["plot_b1_history"][f"{label} engine"] == v["engine_ms_per_token"]
            assert drawn["plot_b1_history"][f"{label} graph replay alone"] == v["forward_ms_median"]
    if "plot_offline" in drawn:
        rows = results["offline_gpu_1024"]["rows"]
        assert [drawn["plot_offline"][f"ours {r['label']}"] for r in rows] == [r["output_tokens_per_s"] for r in rows]
        later = [(stem, label) for stem, label in plots.OFFLINE_RUNS if stem in results]
        assert [drawn["plot_offline"][label] for _, label in later] == \
            [results[stem]["rows"][0]["output_tokens_per_s"] for stem, _ in later]
    if "plot_profile" in drawn:
        for label, stem in plots.PROFILE_RUNS:
            for r in results[stem]["rows"]:
                assert drawn["plot_profile"][f"{label} B={r['batch']} wall ms"] == r["wall_ms_per_step"]
                for c, v in r["classes"].items():
                    assert drawn["plot_profile"][f"{label} B={r['batch']} {c} us"] == v["us_per_step"]
    if "plot_serve" in drawn:
        r16 = results["titan_serve_rate16" + plots.SERVE_RUN]
        assert drawn["plot_serve"]["ttft_ms p99 @ 16"] == r16["ttft_ms"]["p99"]


def test_values_follow_the_input_not_the_files(results, tmp_path):
    """Change a figure in memory: the plot must draw the changed one (nothing is typed into plots.py)."""
    if "offline_gpu_1024" not in results or "vllm_tinyllama_gpu" not in results:
        pytest.skip("offline / vLLM GPU results not recorded")
    fake = json.loads(json.dumps(results))
    fake["offline_gpu_1024"]["rows"][0]["output_tokens_per_s"] = 123_456.0
    assert plots.plot_offline(fake, tmp_path)["ours continuous"] == 123_456.0


def test_profile_follows_the_input(results, tmp_path):
    """Every class of every profiled batch is drawn from its row; a class a row lacks is drawn as 0."""
    if any(stem not in results for _, stem in plots.PROFILE_RUNS):
        pytest.skip("decode profiles not recorded")
    fake = json.loads(json.dumps(results))
    row = fake["profile_decode_overlap_on_gpu"]["rows"][0]
    row["classes"]["gemm"]["us_per_step"] = 4321.0
    row["classes"].pop("activation", None)
    drawn = plots.plot_profile(fake, tmp_path)
    label = dict((s, lab) for lab, s in plots.PROFILE_RUNS)["profile_decode_overlap_on_gpu"]
    assert drawn[f"{label} B={row['batch']} gemm us"] == 4321.0
    assert drawn[f"{label} B={row['batch']} activation us"] == 0.0


def test_missing_results_raise_a_clear_error(tmp_path):
    with pytest.raises(KeyError, match="offline_gpu_1024"):
        plots.plot_offline({"vllm_tinyllama_gpu": {}}, tmp_path)
    with pytest.raises(KeyError, match="titan_serve_rate"):
        plots.plot_serve({}, tmp_path)
    with pytest.raises(KeyError, match="profile_decode"):
        plots.plot_profile({}, tmp_path)
