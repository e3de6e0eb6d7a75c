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
    if "plot_offline" in drawn:
        rows = results["offline_gpu_1024"]["rows"]
        assert [drawn["plot_offline"][f"ours {r['label']}"] for r in rows] == [r["output_tokens_per_s"] for r in rows]
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


def test_missing_results_raise_a_clear_error(tmp_path):
    with pytest.raises(KeyError, match="offline_gpu_1024"):
        plots.plot_offline({"vllm_tinyllama_gpu": {}}, tmp_path)
    with pytest.raises(KeyError, match="titan_serve_rate"):
        plots.plot_serve({}, tmp_path)
