"""`make phase2`'s criteria: the CPU ones pass live, the GPU ones skip (never pass) on CPU and quote the record."""
import torch

from common.gate import evaluate
from phase2_mla import gate


def test_cpu_criteria_pass_live():
    for fn in (gate.check_rope_kernels, gate.check_paged_kernel, gate.check_kv_reduction):
        out = fn()
        assert out.passed, (fn.__name__, out)


def test_gpu_criteria_are_skipped_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gpu = [c for c in gate.criteria() if c.needs_cuda]
    assert len(gpu) == 3
    for c in gpu:
        out, _ = evaluate(c)
        assert out.passed is None and out.reason.startswith("skipped (needs CUDA)")


def test_recorded_figures_are_quoted_when_a_gpu_run_exists(monkeypatch):
    fake = {"provenance": {"device": "NVIDIA H100 80GB HBM3", "date": "2026-11-25T15:00:00+00:00", "commit": "aaa"},
            "gqa_provenance": {"device": "NVIDIA H100 80GB HBM3", "date": "2026-11-25T16:00:00+00:00",
                               "commit": "bbb"},
            "summary": {"mla_dsv3_tb_s": 1.23, "mla_tflops": 300.0, "mla_over_gqa_time": 0.5, "mla_us": 200.0,
                        "gqa_dsv3_ms": 0.4, "gqa_dsv3_source": "sdpa"},
            "rope": [{"shape": "decode B=1024, Llama x", "cuda": {"pct_of_copy_ceiling": 1.3},
                      "triton": {"pct_of_copy_ceiling": 1.2}},
                     {"shape": "prefill 16K tokens, Llama x", "distinct_buffers": 1,
                      "cuda": {"pct_of_copy_ceiling": 0.93}, "triton": {"pct_of_copy_ceiling": 0.88}}]}
    monkeypatch.setattr(gate, "_bench", lambda: fake)
    texts = [c.recorded() for c in gate.criteria() if c.needs_cuda]
    assert "1.23 TB/s, 300 TFLOP/s (NVIDIA H100 80GB HBM3, 2026-11-25) — MISSES the threshold" in texts
    gqa = next(t for t in texts if "MLA/GQA time = 0.50" in t)
    assert "commit aaa" in gqa and "separate device call" in gqa and "commit bbb" in gqa
    assert gqa.endswith("meets the threshold")
    fake["summary"]["mla_over_gqa_time"] = 1.5  # a recorded loss is quoted as one
    assert any(t.endswith("MISSES the threshold") and "MLA/GQA time = 1.50" in t
               for t in (c.recorded() for c in gate.criteria() if c.needs_cuda))
    del fake["rope"]  # a record without RoPE rows says so
    assert any("no RoPE rows" in t for t in (c.recorded() for c in gate.criteria() if c.needs_cuda))
    assert any("decode B=1024: 130% (L2-resident, not an HBM figure), prefill 16K tokens: 93%" in t for t in texts)
