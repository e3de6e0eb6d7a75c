"""Where the host's time goes in B=1 decode: the engine's step loop under cProfile, plus the wall time of each
engine.step() and of the GPU forward (CUDA events), so the gap between ms/token and the forward can be attributed.

    python -m phase4_scheduler.profile_host [--model tinyllama-1.1b] [--new-tokens 256] [--top 40] [--name NAME]

Writes phase4_scheduler/results/<name>.json (TITAN_RESULTS_DIR redirects it): per-step host wall times
(percentiles), the forward's GPU times, and the profile's top functions by own time and by cumulative time.
With overlapped decode the GPU waits only when a step's host work exceeds the previous step's GPU time.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys

import torch


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m phase4_scheduler.profile_host", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tinyllama-1.1b")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--top", type=int, default=40, help="functions listed per ordering")
    ap.add_argument("--name", default="profile_host_b1")
    return ap.parse_args(argv)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not torch.cuda.is_available():
        print("profile_host needs a CUDA GPU (it profiles the graph-replaying, overlapped engine)")
        return 1
    from common.bench import write_result
    from common.model_loader import load_model
    from phase4_scheduler.bench_latency import b1_engine, run_greedy

    loaded = load_model(args.model, device="cuda", dtype=torch.bfloat16, random_weights=True)
    eng, timer, prompt = b1_engine(loaded, args.prompt_len, args.new_tokens, cuda_graph=True, fuse=True)
    result = {}
    for rep in ("warm", "profiled"):
        timer.events.clear()
        prof = cProfile.Profile() if rep == "profiled" else None
        if prof:
            prof.enable()
        run = run_greedy(eng, rep, prompt, args.new_tokens)
        if prof:
            prof.disable()
        steps, fwd = run["step_ms"], timer.forward_ms()
        result[rep] = {"ms_per_token": run["ms_per_token"],
                       "step_ms": {"p10": pct(steps, 0.1), "p50": pct(steps, 0.5), "p90": pct(steps, 0.9),
                                   "p99": pct(steps, 0.99), "max": max(steps), "mean": statistics.fmean(steps)},
                       "forward_ms": {"p50": statistics.median(fwd), "p90": pct(fwd, 0.9), "max": max(fwd)},
                       "steps": len(steps)}
        print(rep, result[rep], flush=True)
    for key in ("tottime", "cumulative"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(key).print_stats(args.top)
        result[f"top_{key}"] = s.getvalue().splitlines()
        print(s.getvalue())
    write_result("phase4_scheduler", args.name, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
