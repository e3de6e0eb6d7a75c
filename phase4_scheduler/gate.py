"""`make phase4`: the serving engine's acceptance criteria.

CPU criteria run the acceptance tests live (pytest on the named tests, real engine and server on a small model) and
measure how much of the KV pool a full engine can actually use. GPU criteria run the benchmarks live on a GPU and
otherwise quote results/*.json (the latest GPU runs, an H200 since 2026-12-04; the H100 records stay beside them;
the vLLM and serving files come from the vLLM peer's scripts, which write no provenance block, so their recorded
text names the file and the GPU field instead).

NOTE (B=1 on another GPU): the issue's 0.92 ms is 80% of the H100's 0.73 ms weight roofline. The criterion is the
ratio -- engine ms/token against weight bytes / the copy bandwidth measured in the same run -- so an H200 (1.4x the
bandwidth) is held to its own, lower, roofline rather than to the H100's absolute figure.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.bench import load_result
from common.gate import Criterion, passed, recorded_result, skipped

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


def _rec(name: str, fmt, meets=None):
    return recorded_result(PHASE, name, fmt, meets)


def _rec_plain(describe):
    """A `recorded=` for files without a provenance block (vLLM peer / serve client output): quote, name the file."""
    def text() -> str:
        from common.bench import load_result

        rs = {n: load_result(PHASE, n) for n in describe.names}
        if any(r is None for r in rs.values()):
            return "not recorded (" + ", ".join(f"results/{n}.json" for n, r in rs.items() if r is None) + " missing)"
        return describe(rs)
    return text


def check_kv_usable():
    """Fill an engine until the scheduler must preempt; the most blocks ever in use over the blocks the runner
    reserved (the pool is num_blocks + 1: one scratch block for padded CUDA-graph rows) is the usable fraction."""
    from common.sampling import SamplingParams
    from phase4_scheduler.engine import LLMEngine

    eng = LLMEngine.from_model("tinyllama-1.1b", device="cpu", random_weights=True, num_layers=1, num_blocks=64,
                               block_size=16, max_model_len=512, max_num_seqs=32, detokenize=False)
    params = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
    for i in range(32):
        eng.add_request(f"r{i}", [(31 * i + 7 * j) % 32000 + 1 for j in range(20 + i % 7)], params)
    kv, reserved = eng.kv, eng.runner.k_cache.shape[1]
    peak, fill = 0, 0.0
    while eng.has_unfinished() and eng.scheduler.num_preemptions == 0:
        eng.step(final_only=True)
        used = kv.num_total_blocks - kv.num_free_blocks
        if used > peak:
            toks = sum(kv.num_tokens(r.request_id) for r in eng.scheduler.running if kv.has(r.request_id))
            peak, fill = used, toks / (used * kv.block_size)
    for rid in list(eng.requests):
        eng.abort_request(rid)
    frac = peak / reserved
    return passed(f"{frac:.1%} of blocks ({peak}/{reserved} reserved, {eng.scheduler.num_preemptions} preemption(s)); "
                  f"slots filled in used blocks {fill:.1%}", frac >= 0.95 and eng.scheduler.num_preemptions > 0)


def _offline(argv: list[str]):
    from phase4_scheduler.bench_offline import main

    return main(argv)["rows"]


B1_ROOFLINE_SHARE = 0.8  # 0.92 ms on the H100's 0.73 ms roofline
# the latest runs on the issue's own card, an H100 (2026-12-06), B=1 and offline from the call that measured the vLLM
# peer too (same lease); the H200's (latency_l2pf_s8_h200: 63% of its roofline; offline_gpu_1024_h200: 102.6k tok/s;
# equal_latency_seats512_mixed_s8_h200: 2.35x) are in the README and REPORT.md
# B=1: the latest H100 run of the default engine (2026-12-06, twentieth session: direct graph I/O -- the decode
# graph reads its inputs from pinned memory and writes its greedy tokens back, graph_io.py -- beside the copy path
# it replaced, alternating in one call; its first variant). The vLLM / HF comparisons keep the lease they were
# measured in.
B1_RECORD = "latency_graphio_s1210h_h100"
PEER_LEASE_B1_RECORD = "latency_s1206_h100"  # our B=1 in the lease of the vLLM and HF figures below
OFFLINE_RECORD = "offline_gpu_1024_s1206_h100"
# the latest equal-latency sweep with both policies (512 seats; from 64 req/s, with p50 targets 1.0-1.75 s too)
EQUAL_RECORD = "equal_latency_wide512_s1206b_h100"
SHAREGPT_RECORD = "sharegpt_static_vs_continuous_s1206_h100"


def check_b1_latency():
    from phase4_scheduler.bench_latency import main

    r = main(["--model", "tinyllama-1.1b", "--random-weights", "--variants", "graph+fused", "--name", "b1_gpu_gate"])
    return passed(_b1_record(r), _b1(r)["pct_of_roofline"] >= B1_ROOFLINE_SHARE)


def check_offline_throughput():
    rows = _offline(["--device", "cuda", "--random-weights", "--fuse", "--num-prompts", "1024", "--max-num-seqs",
                     "1024", "--max-num-batched-tokens", "32768", "--kv-memory", "0.3", "--name", "offline_gpu_gate"])
    return passed(f"{rows[0]['output_tokens_per_s']:,.0f} out tok/s", rows[0]["output_tokens_per_s"] >= 100_000)


def check_continuous_vs_static():
    rows = _offline(["--device", "cuda", "--random-weights", "--fuse", "--workload", "sharegpt", "--num-prompts", "1000",
                     "--compare-static", "--max-num-seqs", "512", "--max-num-batched-tokens", "8192", "--kv-memory",
                     "0.3", "--name", "static_vs_continuous_gpu_gate"])  # SHAREGPT_RECORD's setup
    ratio = rows[0]["output_tokens_per_s"] / rows[1]["output_tokens_per_s"]
    return passed(f"{ratio:.2f}x (offline ShareGPT throughput)", ratio >= 3)


def check_equal_latency():
    from phase4_scheduler.bench_equal_latency import main as bench

    r = bench(["--device", "cuda", "--model", "tinyllama-1.1b", "--random-weights", "--fuse", "--max-num-seqs", "512",
               "--max-num-batched-tokens", "8192", "--kv-memory", "0.3", "--rates", "160", "192", "224", "256", "320",
               "384", "448", "512", "576", "--max-requests", "4608", "--duration", "8",
               "--name", "equal_latency_gpu_gate"])  # EQUAL_RECORD's setup (tools/device_session.sh steady)
    ratio = r["summary"].get("continuous_over_static_at_equal_p50")
    return passed(f"{ratio:.2f}x at equal p50 latency" if ratio else "no ratio (see the JSON)", bool(ratio and ratio >= 3))


def _b1(r: dict) -> dict:
    """The overlapped fused engine's row of bench_latency's record (the first variant without '+sync', '+nopdl' or
    '+unfused')."""
    return next(v for v in r["variants"] if not {"sync", "nopdl", "unfused"} & set(v["variant"].split("+"))
                and "engine_ms_per_token" in v)


def _b1_record(r: dict) -> str:
    v = _b1(r)
    others = [f"{x['engine_ms_per_token']:.2f} {x['variant']}" for x in r["variants"]
              if x is not v and "engine_ms_per_token" in x]
    also = f"; same run: {', '.join(others)}" if others else ""
    return (f"{v['engine_ms_per_token']:.2f} ms/token = {v['roofline_ms'] / v['engine_ms_per_token']:.0%} of the weight "
            f"roofline {v['roofline_ms']:.2f} ms ({v['variant']}; forward alone {v['forward_ms_median']:.2f} ms{also})")


def _equal_record(r: dict) -> str:
    """Each static baseline's ratio at its best with the bracket the rate grid allows (last stable .. first
    saturated rate) -- what the criterion judges -- then, for context, the ratio at each given p50 target ("none":
    static meets that target at no swept rate)."""
    out, given = [], []
    for c in r["comparison"]:
        if c["target"] == "given":
            given.append(f"{c['target_p50_s']:.2f} s: " + (f"{c['ratio']:.2f}x" if c["ratio"] else "none"))
            continue
        if not c["ratio"]:
            continue
        hi = f"{c['ratio_high']:.2f}" if c.get("ratio_high") else "inf"
        out.append(f"vs {c['baseline']}: {c['ratio']:.2f}x (bracket {c['ratio_low']:.2f}..{hi}) at p50 <= "
                   f"{c['target_p50_s']:.2f} s")
    if out and given:
        out[-1] += f" (at p50 targets {', '.join(given)})"
    return "; ".join(out) or "no ratio (see the JSON)"


def _vllm_vs_ours(rs: dict) -> str:
    v, lat, o = (rs[n] for n in _vllm_vs_ours.names)
    b1 = v["b1_ms_per_token"] / _b1(lat)["engine_ms_per_token"]
    off = o["rows"][0]["output_tokens_per_s"] / v["offline_1024x128x128"]["out_tok_per_s"]
    return (f"vLLM {v['vllm']}: B=1 {v['b1_ms_per_token']:.2f} ms/token, 1024x128/128 "
            f"{v['offline_1024x128x128']['out_tok_per_s']:,.0f} tok/s -> ours {b1:.2f}x faster at B=1, {off:.2f}x "
            f"offline, on {v['gpu']} ({', '.join(f'results/{n}.json' for n in _vllm_vs_ours.names)})"
            " — recorded")


_vllm_vs_ours.names = ("vllm_tinyllama_1024_s1206_h100", PEER_LEASE_B1_RECORD, OFFLINE_RECORD)  # one H100 lease


def _hf_record(r: dict) -> str:
    """HF eager from the offline record; our B=1 from the same lease's latency record (PEER_LEASE_B1_RECORD) when
    the offline run did not time B=1 itself (it does with --latency: b1_speedup_vs_hf)."""
    s = r["summary"]
    if "b1_speedup_vs_hf" in s:
        b1 = f"{s['b1_speedup_vs_hf']:.1f}x at B=1"
    else:
        lat = load_result(PHASE, PEER_LEASE_B1_RECORD)
        b1 = (f"{s['hf_b1_ms_per_step'] / _b1(lat)['engine_ms_per_token']:.1f}x at B=1 "
              f"(results/{PEER_LEASE_B1_RECORD}.json)"
              if lat else "B=1 not timed in this run")
    return (f"HF B=1 {s['hf_b1_ms_per_step']:.1f} ms/step, B=64 {s['hf_b64_output_tok_s']:,.0f} tok/s; ours {b1}, "
            f"{s['throughput_vs_best_hf']:.1f}x throughput")


def check_vllm():
    """vLLM runs in its own environment (../shared/peers/vllm), never beside the engine: the comparison is recorded,
    so on a GPU this skips with the recorded figures rather than passing on a file."""
    return skipped("vLLM is measured in its own environment (../shared/peers/vllm); recorded: "
                   + _rec_plain(_vllm_vs_ours)())


def check_hf():
    from phase4_scheduler.bench_offline import main

    s = main(["--device", "cuda", "--random-weights", "--fuse", "--num-prompts", "64", "--max-num-seqs", "64",
              "--latency", "--hf", "--hf-batch", "1", "64", "--name", "hf_gpu_gate"])["summary"]
    missing = [k for k in ("hf_b1_ms_per_step", "hf_b64_output_tok_s", "b1_speedup_vs_hf") if k not in s]
    if missing:  # a verdict naming what was not recorded (this used to test a key the message had already read)
        return passed("not recorded", False, f"bench_offline's summary lacks {', '.join(missing)}")
    return passed(f"HF B=1 {s['hf_b1_ms_per_step']:.1f} ms/step, B=64 {s['hf_b64_output_tok_s']:,.0f} tok/s; ours "
                  f"{s['b1_speedup_vs_hf']:.1f}x at B=1", True)


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
    yield Criterion("KV pool usable before preemption (CPU engine)", ">= 95% of reserved blocks", check_kv_usable)
    yield Criterion("B=1 decode, TinyLlama-1.1B shapes", ">= 80% of the weight roofline (0.92 ms on an H100)",
                    check_b1_latency, needs_cuda=True, recorded=_rec(
                        B1_RECORD, _b1_record,
                        lambda r: _b1(r)["roofline_ms"] / _b1(r)["engine_ms_per_token"] >= B1_ROOFLINE_SHARE))
    yield Criterion("offline 1024 x (128 in, 128 out)", ">= 100k out tok/s", check_offline_throughput,
                    needs_cuda=True, recorded=_rec(OFFLINE_RECORD, lambda r: (
                        f"{r['rows'][0]['output_tokens_per_s']:,.0f} tok/s (max_num_seqs "
                        f"{r['workload']['max_num_seqs']}, budget {r['workload']['max_num_batched_tokens']}, fused, "
                        f"overlapped decode; GPU busy {r['rows'][0]['gpu_utilization']['util_mean_pct']:.0f}% of the "
                        "time by NVML)"),
                        lambda r: r["rows"][0]["output_tokens_per_s"] >= 100_000))
    yield Criterion("continuous vs static batching, ShareGPT (H100)", ">= 3x", check_continuous_vs_static,
                    needs_cuda=True, recorded=_rec(
                        SHAREGPT_RECORD,
                        lambda r: (f"{r['summary']['continuous_over_static']:.2f}x ({r['summary']['continuous_output_tok_s']:,.0f}"
                                   f" vs {r['summary']['static_output_tok_s']:,.0f} tok/s, {r['workload']['max_num_seqs']} "
                                   "seats each; static baseline unpadded)"),
                        lambda r: r["summary"]["continuous_over_static"] >= 3))
    yield Criterion("continuous vs static at equal p50 latency, ShareGPT, Poisson", ">= 3x", check_equal_latency,
                    needs_cuda=True, recorded=_rec(
                        EQUAL_RECORD,
                        _equal_record,
                        lambda r: (r["summary"].get("continuous_over_static_at_equal_p50") or 0) >= 3))
    yield Criterion("vLLM side by side, TinyLlama shapes", "B=1 and offline recorded", check_vllm,
                    needs_cuda=True, recorded=_rec_plain(_vllm_vs_ours))
    yield Criterion("HF transformers eager side by side (H100)", "B=1 and B=64 recorded", check_hf,
                    needs_cuda=True, recorded=_rec(OFFLINE_RECORD, _hf_record,
                                                   lambda r: {h["batch"] for h in r["hf"]} >= {1, 64}))
