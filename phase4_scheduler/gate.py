"""`make phase4`: the serving engine's acceptance criteria.

CPU criteria run the acceptance tests live (pytest on the named tests, real engine and server on a small model);
GPU criteria run the benchmarks live on a GPU and otherwise quote results/ (none recorded yet: the first session's
device time went to phases 0-3).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.gate import Criterion, passed, recorded_result

TITLE = "Phase 4 — Continuous batching: the serving engine"
PHASE = "phase4_scheduler"
TESTS = Path(__file__).parent / "tests"


def _pytest(*node_ids: str):
    """Run the named acceptance tests in a fresh interpreter; pass iff all of them pass (none skipped)."""
    def check():
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *(str(TESTS / n) for n in node_ids)]
        r = subprocess.run(args, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
        tail = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
        return passed(tail, r.returncode == 0 and "skipped" not in tail and "passed" in tail)
    return check


def _offline(argv: list[str]):
    from phase4_scheduler.bench_offline import main

    return main(argv)["rows"]


def check_b1_latency():
    rows = _offline(["--device", "cuda", "--random-weights", "--num-prompts", "1", "--input-len", "128",
                     "--output-len", "256", "--max-num-seqs", "1", "--name", "b1_gpu_gate"])
    ms = 1e3 / rows[0]["output_tokens_per_s"]
    return passed(f"{ms:.2f} ms/token (incl. prefill)", ms <= 0.92)


def check_offline_throughput():
    rows = _offline(["--device", "cuda", "--random-weights", "--num-prompts", "1024", "--max-num-seqs", "256",
                     "--name", "offline_gpu_gate"])
    return passed(f"{rows[0]['output_tokens_per_s']:,.0f} out tok/s", rows[0]["output_tokens_per_s"] >= 100_000)


def check_continuous_vs_static():
    rows = _offline(["--device", "cuda", "--random-weights", "--workload", "sharegpt", "--num-prompts", "1000",
                     "--compare-static", "--max-num-seqs", "256", "--name", "static_vs_continuous_gpu_gate"])
    ratio = rows[0]["output_tokens_per_s"] / rows[1]["output_tokens_per_s"]
    return passed(f"{ratio:.2f}x (offline ShareGPT throughput)", ratio >= 3)


def criteria():
    yield Criterion("batched / chunked / preempted greedy = single-request engine", "token-identical",
                    _pytest("test_engine.py::test_batched_equals_single_request_engine",
                            "test_engine.py::test_chunked_prefill_equals_reference",
                            "test_engine.py::test_preemption_under_tiny_pool_gives_same_tokens"))
    yield Criterion("aborts and mixed workloads leak no KV blocks", "0 blocks leaked",
                    _pytest("test_engine.py::test_abort_frees_blocks", "test_engine.py::test_mixed_workload_leaks_no_blocks"))
    yield Criterion("official openai client: completions + chat, streaming and not", "all pass",
                    _pytest("test_server_engine.py::test_completion_stream_matches_non_stream",
                            "test_server_engine.py::test_chat_uses_the_chat_template"))
    yield Criterion("bad requests get 4xx with OpenAI error JSON", "all pass",
                    _pytest("test_server_fake.py::test_completion_errors", "test_server_fake.py::test_chat_errors",
                            "test_server_fake.py::test_malformed_json_and_unknown_route"))
    yield Criterion("100 concurrent streams, 10% aborted mid-stream", "90 exact counts, 0 blocks leaked",
                    _pytest("test_server_engine.py::test_100_concurrent_streams_10pct_aborted"))
    yield Criterion("B=1 decode, TinyLlama-1.1B shapes (H100)", "<= 0.92 ms/token", check_b1_latency,
                    needs_cuda=True, recorded=recorded_result(PHASE, "b1_gpu", lambda r: f"{1e3 / r['rows'][0]['output_tokens_per_s']:.2f} ms/token",
                                                              lambda r: 1e3 / r["rows"][0]["output_tokens_per_s"] <= 0.92))
    yield Criterion("offline 1024 x (128 in, 128 out) (H100)", ">= 100k out tok/s", check_offline_throughput,
                    needs_cuda=True, recorded=recorded_result(PHASE, "offline_gpu", lambda r: f"{r['rows'][0]['output_tokens_per_s']:,.0f} tok/s",
                                                              lambda r: r["rows"][0]["output_tokens_per_s"] >= 100_000))
    yield Criterion("continuous vs static batching, ShareGPT (H100)", ">= 3x", check_continuous_vs_static,
                    needs_cuda=True, recorded=recorded_result(
                        PHASE, "sharegpt_static_vs_continuous_gpu",
                        lambda r: f"{r['rows'][0]['output_tokens_per_s'] / r['rows'][1]['output_tokens_per_s']:.2f}x",
                        lambda r: r["rows"][0]["output_tokens_per_s"] >= 3 * r["rows"][1]["output_tokens_per_s"]))
