"""profile_decode: the trace arithmetic (classes, busy-time union, per-step summary) and a CPU run end to end."""
import pytest

from phase4_scheduler.profile_decode import busy_us, classify, main, summarize_kernels


def test_classify_names_the_usual_kernels():
    assert classify("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64") == "gemm"
    assert classify("_skinny_gemv_kernel") == "gemm"
    assert classify("_paged_decode_attention_kernel") == "attention"
    assert classify("_add_rms_norm_kernel") == "norm"
    assert classify("_rope_qk_kernel") == "rope"
    assert classify("_silu_mul_kernel") == "activation"
    assert classify("void at::native::reduce_kernel<argmax>") == "sampling"
    assert classify("Memcpy HtoD (Pinned -> Device)") == "copy"
    assert classify("some_unknown_thing") == "other"


def test_busy_us_is_the_union_of_intervals():
    assert busy_us([]) == 0
    assert busy_us([(0, 10), (5, 12), (20, 25)]) == 17  # overlap counted once, gap not counted
    assert busy_us([(20, 25), (0, 10)]) == 15  # order does not matter
    assert busy_us([(0, 10), (2, 3)]) == 10  # nested


def test_summarize_kernels_per_step():
    k = [("gemm_a", 0, 40), ("attn_b", 40, 50), ("gemm_a", 100, 140), ("attn_b", 140, 150)]
    s = summarize_kernels(k, steps=2, wall_ms=0.1)
    assert s["kernels_per_step"] == 2
    assert s["gpu_busy_ms_per_step"] == pytest.approx(0.05)
    assert s["gpu_idle_share"] == pytest.approx(0.5)
    assert s["classes"]["gemm"] == {"kernels_per_step": 1.0, "us_per_step": 40.0}
    assert s["top_kernels_us_per_step"][0] == {"name": "gemm_a", "us": 40.0}
    with pytest.raises(ValueError):
        summarize_kernels(k, steps=0, wall_ms=1)


def test_cpu_run_reports_no_device_trace(tmp_path, monkeypatch):
    monkeypatch.setenv("TITAN_RESULTS_DIR", str(tmp_path))
    res = main(["--model", "smollm2-135m", "--random-weights", "--num-layers", "1", "--batches", "2",
                "--steps", "2", "--warm", "1", "--kv-memory", "32MiB", "--device", "cpu"])
    row = res["rows"][0]
    assert row["batch"] == 2 and row["wall_ms_per_step"] > 0
    assert row["gpu_busy_ms_per_step"] is None and row["gpu_idle_share"] is None and "no CUDA" in row["note"]
    assert (tmp_path / "profile_decode_cpu.json").exists()


def test_prefill_bound_leaves_room_for_the_running_decodes_share_of_the_budget():
    """448 prompts of 1,536 tokens at an 8,192-token budget: 84 steps if every step were all prefill, but each running
    sequence takes one token of a step, so the bound counts budget - batch tokens a step."""
    from phase4_scheduler.profile_decode import prefill_steps_bound

    assert prefill_steps_bound(448, 1536, 8192, 16) == -(-448 * 1536 // (8192 - 448)) + 16 + 2 == 107
    assert prefill_steps_bound(448, 1536, 8192, 16) > -(-448 * 1536 // 8192) + 16 + 2
    assert prefill_steps_bound(1, 128, 8192, 0) == 3
    assert prefill_steps_bound(8000, 16, 8192, 0) == -(-8000 * 16 // 4096) + 2  # never under half the budget


def test_profile_keeps_the_whole_batch_running_under_admission_batching():
    """With CUDA graphs the engine batches admissions (admit_min_free_seats = max_num_seqs // 16); filling a batch of
    long prompts then held the last seats so long that the first requests finished inside the profiled window (the
    H100's B=448 x 1,536 run kept 285). Reproduced here on the CPU with 32 seats, 8 held: all 32 stay running, and
    the engine's own setting is restored afterwards."""
    from common.model_loader import load_model
    from phase4_scheduler.engine import LLMEngine
    from phase4_scheduler.profile_decode import profile_batch

    loaded = load_model("smollm2-135m", device="cpu", random_weights=True, num_layers=1)
    eng = LLMEngine(loaded, max_num_seqs=32, max_num_batched_tokens=128, max_model_len=600, kv_memory="256MiB",
                    detokenize=False, admit_min_free_seats=8)
    r = profile_batch(eng, 32, 64, 2, 1)
    assert r["running_after_window"] == 32 and r["batch"] == 32
    assert eng.scheduler.admit_min_free_seats == 8 and not eng.has_unfinished()
