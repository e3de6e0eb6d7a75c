"""Continuous vs static batching at EQUAL p50 latency: Poisson arrivals of ShareGPT-length requests, swept rates.

    # the H100 run (issue 6: "continuous against static batching on ShareGPT at equal p50 latency, at least 3x");
    # ~4 min: 3 policies x up to 9 rates x (5 s of arrivals + the drain)
    python -m phase4_scheduler.bench_equal_latency --device cuda --model tinyllama-1.1b --random-weights --fuse \\
        --max-num-seqs 256 --max-num-batched-tokens 8192 --kv-memory 0.3 --rates 8 16 32 48 64 80 96 128 160 \\
        --duration 5 --lengths-file .cache/sharegpt_lengths_smollm2_1000_1024_2048_4.json
    # CPU smoke of the method (tiny model, lengths x0.05; not a performance figure): results/equal_latency_cpu.json
    python -m phase4_scheduler.bench_equal_latency --device cpu --model smollm2-135m --random-weights \\
        --num-layers 1 --threads 1 --kv-memory 16MiB --length-scale 0.05 --max-num-seqs 16 \\
        --rates 4 8 16 24 32 48 64 --min-requests 40 --duration 4

An offline serving simulation: no HTTP, the benchmark drives LLMEngine itself on the wall clock. Each request is
added once its Poisson arrival time has passed, the engine steps, and each request's arrival, first-token and
finish times are kept (ignore_eos; each asks exactly its ShareGPT reference output length). A stable point's
throughput is what it was offered (output tokens / arrival window: it served them all without a growing queue); a
saturated point's is measured over its busy period (first arrival to last finish). Per policy
(continuous = LLMEngine's default; static = static_batching.static_engine; static_padded = static_padded.py, HF
generate's compute) the rates are swept upward; each point records throughput and p50/p90/p99 of end-to-end
latency, TTFT and TPOT. Writes results/equal_latency_<cpu|gpu>.json (every swept point) and a .png.

NOTE (saturation): past its capacity mu a FCFS queue's waiting time grows linearly: the i-th request arrives at
i/rate and starts at ~i/mu, so it waits (rate/mu - 1) seconds more per second of arrivals. So a point is saturated
when the least-squares slope of TTFT against arrival time (first 10% of requests dropped: the system starts empty)
exceeds --saturation-slope AND at least half the admission steps of
the second half of the arrivals left requests waiting (seats or KV full; static batching's TTFT is a sawtooth with
a batch-long period, so the slope alone misfires on short runs), or when the point overran its time limit. A
saturated point's latency only says "the queue grows" (it depends on how long we ran), so the sweep stops there
and the comparison never interpolates into it: the max rate at a latency target is then bracketed by the last
stable and the first saturated rate, and both ends are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from common.bench import positive_float, positive_int, results_dir, write_result
from common.sampling import SamplingParams
# the analysis half (pure functions) lives in equal_latency_analysis.py; re-exported for the tests and callers
from phase4_scheduler.equal_latency_analysis import (  # noqa: F401
    best_stable, compare_at, comparisons, is_saturated, left_behind, max_rate_at_latency, percentiles, queue_growth,
    refine_rates)

POLICIES = ("continuous", "static", "static_padded")


# -- the simulation ----------------------------------------------------------------------------------------------
def make_point_workload(pool: list[tuple[int, int]], rate: float, duration: float, min_requests: int,
                        max_requests: int, vocab: int, seed: int = 0):
    """Poisson arrivals at `rate` req/s for ~`duration` s (clamped to [min, max] requests), lengths from the pool."""
    if not rate > 0:
        raise ValueError(f"request rates must be > 0 req/s, got {rate}")
    rng = np.random.default_rng([seed, int(round(rate * 1000))])
    n = int(min(max_requests, max(min_requests, round(rate * duration))))
    idx = rng.choice(len(pool), n, replace=n > len(pool))
    lens = [pool[i] for i in idx]
    gaps = rng.exponential(1.0 / rate, n)
    gaps[0] = 0.0  # the first request at t=0
    if n > 1:  # Poisson burstiness, but the realised mean rate is exactly `rate` (60 draws miss it by ~13%)
        gaps[1:] *= (1.0 / rate) / gaps[1:].mean()
    arrivals = np.cumsum(gaps)
    prompts = [rng.integers(100, vocab - 100, p).tolist() for p, _ in lens]
    return lens, arrivals.tolist(), prompts


def _finish_time(engine, rid: str, now: float) -> float:
    pop = getattr(engine.scheduler, "pop_real_finish", None)  # padded static: the member's own last token
    t = pop(rid) if pop is not None else None
    return now if t is None else t


def simulate(engine, lens, arrivals, prompts, tag: str, max_seconds: float, clock=time.monotonic,
             sleep=time.sleep) -> dict:
    """Feed requests at their arrival times, step until all finished (or `max_seconds`: abort the rest). `clock`
    must be the engine's (time.monotonic: RequestOutput.first_token_time comes from it); tests pass a fake pair."""
    n = len(lens)
    params = [SamplingParams(max_tokens=o, temperature=0.0, ignore_eos=True) for _, o in lens]
    for ids, p in zip(prompts, params):
        engine.validate(ids, p)
    rid = [f"{tag}-{k}" for k in range(n)]
    index = {r: k for k, r in enumerate(rid)}
    first, finish = [None] * n, [None] * n
    pre0, shapes0 = engine.scheduler.num_preemptions, step_shapes(engine)
    waiting = engine.scheduler.waiting
    t0, i, done, timed_out, max_backlog, admissions = clock(), 0, 0, False, 0, []
    while done < n:
        now = clock() - t0
        while i < n and arrivals[i] <= now + 1e-9:  # (a sleep may land a rounding error short of the arrival)
            engine.add_request(rid[i], prompts[i], params[i], validated=True)
            i += 1
        if now > max_seconds:
            timed_out = True
            for r in list(engine.requests):
                engine.abort_request(r)
            break
        if not engine.has_unfinished():
            if i >= n:
                raise RuntimeError(f"{n - done} requests vanished without a finished output")
            sleep(max(0.0, arrivals[i] - now))
            continue
        max_backlog, before = max(max_backlog, len(engine.requests)), len(waiting)
        outs = engine.step(final_only=True)
        t = clock()
        if len(waiting) < before:  # this step admitted requests: did everyone waiting get a seat?
            admissions.append((t - t0, len(waiting)))
        for out in outs:
            if out.finished and out.request_id in index:
                k = index[out.request_id]
                if len(out.output_token_ids) < lens[k][1]:
                    raise RuntimeError(f"{out.request_id} stopped at {len(out.output_token_ids)} of {lens[k][1]}")
                first[k], finish[k] = out.first_token_time - t0, _finish_time(engine, out.request_id, t) - t0
                done += 1
    return {"arrival": list(arrivals), "first": first, "finish": finish, "lens": lens, "timed_out": timed_out,
            "max_backlog": max_backlog, "preemptions": engine.scheduler.num_preemptions - pre0,
            "admissions": admissions, "steps": {k: v - shapes0.get(k, 0) for k, v in step_shapes(engine).items()}}


STEP_COUNTERS = ("num_steps", "num_batched_tokens", "num_overlapped_steps", "num_overlapped_mixed_steps")


def step_shapes(engine) -> dict:
    """The engine's step counters and its runner's graph totals (ModelRunner.step_shapes), whichever it has."""
    counters, runner = getattr(engine, "counters", {}), getattr(engine, "runner", None)
    out = {k: counters[k] for k in STEP_COUNTERS if k in counters}
    return {**out, **(runner.step_shapes() if hasattr(runner, "step_shapes") else {})}


def describe_steps(d: dict) -> dict:
    """A point's step shapes from simulate's counter differences: steps, tokens per step, the share that ran ahead
    (overlapped), and how much of the graphs' work was padding (rows / tokens up to the captured size)."""
    out = {}
    if d.get("num_steps"):
        out["steps"] = d["num_steps"]
        out["tokens_per_step"] = d.get("num_batched_tokens", 0) / d["num_steps"]
        for k in ("num_overlapped_steps", "num_overlapped_mixed_steps"):
            if k in d:
                out[k.replace("num_", "") + "_share"] = d[k] / d["num_steps"]
    for g in ("decode_graph", "mixed_graph"):
        if d.get(f"{g}_steps"):
            out[f"{g}_steps"] = d[f"{g}_steps"]
            out[f"{g}_tokens_per_step"] = d[f"{g}_tokens"] / d[f"{g}_steps"]
            out[f"{g}_padding"] = 1 - d[f"{g}_tokens"] / d[f"{g}_padded_tokens"]
    for kind in ("decode_graph", "mixed_graph", "eager"):  # GPU time per kind of step (TITAN_STEP_TIMING, CUDA)
        if d.get(f"{kind}_timed_steps"):
            out[f"{kind}_timed_steps"] = d[f"{kind}_timed_steps"]
            out[f"{kind}_gpu_ms_per_step"] = d[f"{kind}_gpu_ms"] / d[f"{kind}_timed_steps"]
            out[f"{kind}_gpu_share"] = d[f"{kind}_gpu_ms"] / sum(d.get(f"{k}_gpu_ms", 0.0) for k in
                                                                   ("decode_graph", "mixed_graph", "eager"))
    return out


def summarize_point(rate: float, sim: dict, max_slope: float) -> dict:
    ok = [k for k, f in enumerate(sim["finish"]) if f is not None]
    arr = np.array([sim["arrival"][k] for k in ok])
    first, fin = np.array([sim["first"][k] for k in ok]), np.array([sim["finish"][k] for k in ok])
    out_len = np.array([sim["lens"][k][1] for k in ok])
    e2e, ttft = fin - arr, first - arr
    multi = out_len > 1
    tpot = (fin - first)[multi] / (out_len[multi] - 1)
    span = float(fin.max() - arr.min()) if ok else float("nan")
    window = float(np.ptp(arr)) * len(arr) / max(1, len(arr) - 1) if len(arr) > 1 else float("nan")
    p = {"rate": rate, "requests": len(sim["lens"]), "completed": len(ok), "timed_out": sim["timed_out"] or not ok,
         "seconds": span, "output_tokens": int(out_len.sum()),
         "offered_tok_s": float(out_len.sum() / window), "measured_tok_s": float(out_len.sum() / span),
         "requests_per_s": len(ok) / span, "queue_growth": queue_growth(arr, ttft) if ok else float("inf"),
         "max_backlog": sim["max_backlog"], "preemptions": sim["preemptions"],
         "left_behind": left_behind(sim.get("admissions"), arr), **describe_steps(sim.get("steps") or {})}
    for name, xs in (("e2e", e2e), ("ttft", ttft), ("tpot", tpot)):
        for q, v in percentiles(xs).items():
            p[f"{name}_{q}"] = v
    p["saturated"] = is_saturated(p, max_slope)
    # a stable point serves what it is offered (the measured rate also counts the drain after the last arrival,
    # which biases it low); a saturated one serves its capacity, which the busy period measures
    p["output_tok_s"] = p["measured_tok_s"] if p["saturated"] else p["offered_tok_s"]
    return p


def _f(v, spec: str = ".3f") -> str:
    """A percentile for the progress line: None (no request of the point completed: it timed out) prints as '-'."""
    return "-" if v is None else format(v, spec)


def sweep(engine, policy: str, pool, args, vocab: int, progress=print, **clock) -> list[dict]:
    """Rates upward; stops after the first saturated point (kept: it brackets the capacity). With args.refine = n,
    n more rates between the last stable and the first saturated one narrow that bracket; the points come back
    sorted by rate and cut after the first saturated one."""
    points = []

    def run(j, rate):
        lens, arrivals, prompts = make_point_workload(pool, rate, args.duration, args.min_requests,
                                                      args.max_requests, vocab, args.seed)
        limit = args.timeout_factor * (arrivals[-1] + 1.0) + args.timeout_slack
        sim = simulate(engine, lens, arrivals, prompts, f"{policy}-{j}", limit, **clock)
        p = summarize_point(rate, sim, args.saturation_slope)
        points.append(p)
        progress(f"{policy:>13} rate {rate:7.2f}/s: {p['output_tok_s']:9,.0f} out tok/s, p50 e2e {_f(p['e2e_p50'])} s, "
                 f"ttft {_f(p['ttft_p50'])} s, tpot {_f(p['tpot_p50'], '.4f')} s, growth {p['queue_growth']:+.3f}"
                 + (f", {p['tokens_per_step']:.0f} tok/step" if "tokens_per_step" in p else "")
                 + (f" (mixed graphs {p['mixed_graph_padding']:.0%} padding)" if "mixed_graph_padding" in p else "")
                 + "".join(f", {k.split('_')[0]} {p[k + '_gpu_ms_per_step']:.2f} ms x{p[k + '_timed_steps']}"
                           for k in ("decode_graph", "mixed_graph", "eager") if k + "_gpu_ms_per_step" in p)
                 + ("  SATURATED" if p["saturated"] else ""))
        return p["saturated"]

    rates = sorted(args.rates)
    for j, rate in enumerate(rates):
        if run(j, rate):
            break
    for j, rate in enumerate(refine_rates(points, getattr(args, "refine", 0)), start=len(rates)):
        if run(j, rate):
            break
    points.sort(key=lambda p: p["rate"])
    first = next((i for i, p in enumerate(points) if p["saturated"]), len(points) - 1)
    return points[:first + 1]


def warm_up_bursts(n: int) -> list[int]:
    """Sizes of the warm-up's bursts: n, n - 1 and 1 (n - 1 only when it differs from both)."""
    return [n] + ([n - 1] if n > 2 else []) + ([1] if n > 1 else [])


def warm_up(engine, pool, vocab: int, n: int) -> None:
    """Bursts of n, n - 1 and 1 short requests, each run to the end: compiles the prefill/decode shapes before
    anything is timed.

    NOTE (why n - 1 too): Triton specialises integer arguments by value (== 1, divisible by 16), so a kernel launched
    with a sequence count like 512 and one like 170 are two compilations; a static batcher's admission step (every
    waiting prompt at once, past the mixed-step graphs: eager) meets the second kind only under load. In the H100
    sweep from 64 req/s (equal_latency_wide512_s1206_h100) static's eager steps took 1.0-1.3 s at the first rates
    against ~0.1 s of arithmetic; a burst of n - 1 meets the other variant here. Checked in the next H100 sweep
    (equal_latency_wide512_s1206b_h100): 62-132 ms at every rate but 96 req/s (378 ms, twice)."""
    rng = np.random.default_rng(123)
    k = 0
    for size in warm_up_bursts(n):
        for p, o in pool[:size]:
            engine.add_request(f"__warm{k}", rng.integers(100, vocab - 100, p).tolist(),
                               SamplingParams(max_tokens=min(4, o), temperature=0.0, ignore_eos=True))
            k += 1
        while engine.has_unfinished():
            for out in engine.step(final_only=True):
                _finish_time(engine, out.request_id, 0.0)


def plot(payload: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = {"continuous": "tab:blue", "static": "tab:orange", "static_padded": "tab:red"}
    for name, pol in payload["policies"].items():
        pts = pol.get("points") or []
        ok = [p for p in pts if not p["saturated"]]
        ax.plot([p["output_tok_s"] for p in ok], [p["e2e_p50"] for p in ok], "o-", color=colors.get(name),
                label=f"{name} (p50)")
        ax.plot([p["output_tok_s"] for p in ok], [p["e2e_p90"] for p in ok], ":", color=colors.get(name), alpha=0.6)
        sat = [p for p in pts if p["saturated"]]
        ax.plot([p["output_tok_s"] for p in sat], [p["e2e_p50"] for p in sat], "x", ms=9, color=colors.get(name))
    for row in payload["comparison"]:
        if row["target"] != "given" and row["ratio"]:
            ax.axhline(row["target_p50_s"], ls="--", lw=0.8, color=colors.get(row["baseline"]))
            ax.annotate(f"continuous / {row['baseline']} at this p50: {row['ratio']:.2f}x", (0.01, row["target_p50_s"]),
                        xycoords=("axes fraction", "data"), fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set_xlabel("output tokens / s (offered at a stable point, measured at a saturated one)")
    ax.set_ylabel("end-to-end latency p50, s (dotted: p90)")
    ax.set_yscale("log")
    ax.set_title(f"{payload.get('gpu') or 'CPU smoke (tiny model)'}: latency vs throughput, ShareGPT lengths, "
                 "Poisson arrivals\n"
                 "x = saturated (queue grows); dashed = p50 of a static variant at its best", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_pool(args) -> list[tuple[int, int]]:
    if args.lengths_file:
        pool = [tuple(x) for x in json.loads(Path(args.lengths_file).read_text())]
        if not pool or any(len(x) != 2 or not all(isinstance(v, int) and v >= 1 for v in x) for x in pool):
            raise ValueError(f"{args.lengths_file} must hold a non-empty JSON list of [prompt_len, output_len] "
                             "pairs of positive integers")
    else:
        from common.data import sharegpt_request_lengths
        pool = sharegpt_request_lengths(args.num_pool, max_total=args.max_model_len)
    s = args.length_scale
    if not 0 < s <= 1:
        raise ValueError(f"--length-scale must be in (0, 1], got {s}")
    return [(max(1, min(args.max_prompt_len or 1 << 30, round(p * s))),
             max(2, min(args.max_output_len or 1 << 30, round(o * s)))) for p, o in pool]


def parse_args(argv=None):
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--model", default="tinyllama-1.1b")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--num-layers", type=positive_int, default=None, help="truncate the model (CPU smoke)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    ap.add_argument("--rates", type=positive_float, nargs="+", default=[8, 16, 32, 48, 64, 80, 96, 128, 160],
                    help="request rates to sweep, req/s (each policy stops at its first saturated rate)")
    ap.add_argument("--duration", type=positive_float, default=5.0, help="seconds of arrivals per point (before clamping)")
    ap.add_argument("--refine", type=int, default=0,
                    help="extra rates between each policy's last stable and first saturated rate (narrows the bracket)")
    ap.add_argument("--min-requests", type=positive_int, default=60)
    ap.add_argument("--max-requests", type=positive_int, default=6000,
                    help="cap on a point's requests; keep rate x duration under it: a point whose arrivals are cut "
                         "short (say 2 s against a 1.5 s p50) measures mostly ramp-up and drain, not a steady state")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-pool", type=positive_int, default=1000, help="ShareGPT (prompt, output) pairs to draw from")
    ap.add_argument("--lengths-file", default=None, help="a JSON list of [prompt_len, output_len] instead")
    ap.add_argument("--length-scale", type=positive_float, default=1.0, help="scale both lengths (CPU smoke: 0.05)")
    ap.add_argument("--max-prompt-len", type=positive_int, default=None)
    ap.add_argument("--max-output-len", type=positive_int, default=None)
    ap.add_argument("--max-model-len", type=positive_int, default=2048)
    ap.add_argument("--max-num-seqs", type=positive_int, default=256, help="seats; also the static batch size")
    ap.add_argument("--max-num-batched-tokens", type=positive_int, default=8192, help="continuous: token budget per step")
    ap.add_argument("--kv-memory", default=None, help="bytes ('40GiB') or a fraction of free GPU memory ('0.3')")
    ap.add_argument("--cuda-graph", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto",
                    help="KV pool dtype for every policy (fp8: phase 3's e4m3 pool)")
    ap.add_argument("--fuse", action="store_true", help="the runner's fused kernels")
    ap.add_argument("--detokenize", action="store_true", help="per-token text as a server would (default: ids)")
    ap.add_argument("--saturation-slope", type=float, default=0.15,
                    help="max d(TTFT)/d(arrival) of a stable point (0.15: rate > 1.15x capacity)")
    ap.add_argument("--timeout-factor", type=positive_float, default=4.0, help="a point may run factor x arrivals + slack")
    ap.add_argument("--timeout-slack", type=float, default=30.0)
    ap.add_argument("--target-p50", type=positive_float, nargs="*", default=[], help="extra p50 targets, seconds")
    ap.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (CPU smoke on a shared box: 1)")
    ap.add_argument("--name", default=None)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--reanalyze", default=None, metavar="JSON",
                    help="recompute a recorded run's comparisons with this analysis (no GPU; keeps its points and "
                         "provenance, records the reanalysis) and exit")
    return ap.parse_args(argv)


def summary_of(comparison: list[dict]) -> dict:
    """The run's headline ratios: continuous over each static baseline at that baseline's best p50."""
    return {f"continuous_over_{r['baseline']}_at_equal_p50": r["ratio"] for r in comparison if r["target"] != "given"}


def reanalyze(path: str) -> dict:
    """Recompute the comparisons (and summary) of a recorded run from its measured points with the current
    analysis; the points, workload and provenance stay, a `reanalysis` entry says when and from which commit."""
    import json
    from pathlib import Path

    from common.bench import provenance

    p = Path(path)
    if not p.exists():
        raise SystemExit(f"bench_equal_latency --reanalyze: no such file: {p}")
    payload = json.loads(p.read_text())
    before = [r.get("ratio") for r in payload.get("comparison", [])]
    payload["comparison"] = comparisons({k: v["points"] for k, v in payload["policies"].items()},
                                        payload["workload"].get("target_p50") or [])
    payload["summary"] = summary_of(payload["comparison"])
    now = provenance()
    payload["reanalysis"] = {"commit": now.get("commit"), "date": now.get("date"), "ratios_before": before,
                             "ratios_after": [r["ratio"] for r in payload["comparison"]]}
    p.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"reanalyzed {p}: ratios {before} -> {payload['reanalysis']['ratios_after']}")
    return payload


def main(argv=None) -> dict:
    import torch

    from common.model_loader import load_model
    from phase4_scheduler.bench_offline import guarded, release
    from phase4_scheduler.engine import LLMEngine, freeze_heap
    from phase4_scheduler.static_batching import static_engine
    from phase4_scheduler.static_padded import padded_static_engine

    args = parse_args(argv)
    if args.reanalyze:
        return reanalyze(args.reanalyze)
    os.environ.setdefault("TITAN_STEP_TIMING", "1")  # GPU time per kind of step, per point (step_timer.py)
    if args.threads:
        torch.set_num_threads(args.threads)
    kv = args.kv_memory  # a string: the engine's parse_memory reads '0.3' as a fraction; --rates > 0: its type
    pool = load_pool(args)  # before the model: a bad file fails fast
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, random_weights=args.random_weights,
                        num_layers=args.num_layers)
    vocab, dev = loaded.config.vocab_size, ("gpu" if loaded.device.type == "cuda" else "cpu")
    label = (torch.cuda.get_device_name() if dev == "gpu" else
             "CPU smoke of the method (tiny model, scaled lengths; not a performance figure)")
    errors: dict[str, str] = {}
    payload = {"label": label, "gpu": label if dev == "gpu" else None, "model": loaded.source,
               "dtype": str(loaded.dtype), "device": str(loaded.device),
               "workload": vars(args), "pool": {"requests": len(pool), "mean_prompt": float(np.mean(pool, 0)[0]),
                                                "mean_output": float(np.mean(pool, 0)[1])},
               "policies": {}, "comparison": [], "errors": errors}
    kw = dict(max_model_len=args.max_model_len, kv_memory=kv, detokenize=args.detokenize,
              kv_cache_dtype=args.kv_cache_dtype, cuda_graph={"auto": None, "on": True, "off": False}[args.cuda_graph])
    fuse = [args.fuse]  # the first engine fuses loaded.model in place; later engines reuse the fused model
    build = {"continuous": lambda: LLMEngine(loaded, max_num_seqs=args.max_num_seqs, fuse=fuse[0],
                                             max_num_batched_tokens=args.max_num_batched_tokens, **kw),
             "static": lambda: static_engine(loaded, args.max_num_seqs, fuse=fuse[0], **kw),
             "static_padded": lambda: padded_static_engine(loaded, args.max_num_seqs, fuse=fuse[0], **kw)}
    for name in args.policies:
        def section(name=name):
            engine = build[name]()
            fuse[0] = False
            freeze_heap()
            warm_up(engine, pool, vocab, min(args.max_num_seqs, len(pool)))
            t0 = time.perf_counter()
            points = sweep(engine, name, pool, args, vocab)
            out = {"points": points, "sweep_seconds": time.perf_counter() - t0, "engine": repr(engine)}
            if hasattr(engine.scheduler, "num_padded_tokens"):
                out["padded_tokens"] = engine.scheduler.num_padded_tokens
            del engine
            release()
            return out
        res = guarded(name, section, errors)
        if res is not None:
            payload["policies"][name] = res
        write_result("phase4_scheduler", args.name or f"equal_latency_{dev}", payload)  # a killed run keeps these
    payload["comparison"] = comparisons({k: v["points"] for k, v in payload["policies"].items()}, args.target_p50)
    payload["summary"] = summary_of(payload["comparison"])
    for r in payload["comparison"]:
        c, s = r["continuous"], r["static"]
        print(f"p50 <= {r['target_p50_s']:.3f} s ({r['target']}): continuous {c['output_tok_s'] or 0:,.0f} tok/s "
              f"[{c['limited_by']}] vs {r['baseline']} {s['output_tok_s'] or 0:,.0f} tok/s [{s['limited_by']}] -> "
              + (f"{r['ratio']:.2f}x (bracket {r['ratio_low']:.2f}..{r['ratio_high'] or float('inf'):.2f})"
                 if r["ratio"] else "no ratio"))
    name = args.name or f"equal_latency_{dev}"
    if not args.no_plot and payload["policies"]:
        png = results_dir("phase4_scheduler") / f"{name}.png"
        if guarded("plot", lambda: plot(payload, png), errors) is None and "plot" not in errors:
            payload["plot"] = png.name
    if errors:
        print("errors: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    write_result("phase4_scheduler", name, payload)
    return payload


if __name__ == "__main__":
    from common.cli import run_script

    run_script(main, "bench_equal_latency")
