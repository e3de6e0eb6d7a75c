"""Host time of a MIXED step (decode rows + newly arrived prompts) against a decode-only step, model stubbed.

    python -m phase4_scheduler.bench_mixed_step_host                  # B = 256, 448, 1024; 2 arrivals a step
    python -m phase4_scheduler.bench_mixed_step_host --batch 448 --arrivals 1 2 4 --prompt-len 109

Why: when serving at equal latency (bench_equal_latency) nearly every step admits a request, so overlapped decode
(overlap.py), which ran ahead only through decode-only steps, never hid the host's part of a step: the GPU waited for
it every step. This measures that part with bench_step_overhead's stub (the runner returns fixed logits; no model is
computed; the logits are 64 columns wide so the sampler's argmax, device work on a GPU, stays out): B requests in
steady decode, then steps that each first receive `arrivals` new requests of `prompt_len` tokens (ShareGPT's mean
prompt for SmolLM2's tokenizer is ~109) and admit them, against steps that receive none; each with per-token
RequestOutputs (`step()`; the server's engine process takes the cheaper `increments`) and with
`step(final_only=True)` (LLM.generate and bench_equal_latency). `add_ms` is add_request's own time for those
arrivals (a server pays it too, outside step()). Times are medians over the steps, one thread. Two modes (--modes):
`sync`, each step's host part between two forwards (the GPU waits for all of it), and `overlap_mixed`
(LLMEngine(overlap=True, overlap_mixed=True)): step() schedules and launches step N+1, then reads step N's tokens,
so its host part runs while the GPU computes and is hidden where it is shorter than the GPU's step.
This box's CPU is not the GPU machine's: read the ratio and the order of magnitude. Writes
results/mixed_step_host_cpu.json.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from common.bench import write_result
from common.sampling import SamplingParams
from phase4_scheduler.bench_step_overhead import HOST_VOCAB, decode_engine

MODES = ("sync", "overlap_mixed")


def measure_mixed(batch: int, arrivals: int, prompt_len: int, steps: int, vocab: int = 32000,
                  mode: str = "sync") -> dict:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    kw = {"overlap": True, "overlap_mixed": True} if mode == "overlap_mixed" else {}
    eng = decode_engine(batch, vocab, None, prompt_len, steps, seats=batch + arrivals * 3 * steps, **kw)
    stub = eng.runner.execute
    stub.logits = stub.logits[:, :HOST_VOCAB].contiguous()  # no argmax over the vocabulary: host work only
    g = torch.Generator().manual_seed(2)
    params = SamplingParams(max_tokens=6 * steps + 30, temperature=0.0, ignore_eos=True)
    prompt = lambda: torch.randint(3, vocab, (prompt_len,), generator=g).tolist()  # noqa: E731
    n = batch
    for _ in range(3):
        eng.step()
    decode, mixed, adds, admitted = {}, {}, [], 0
    for final_only in (False, True):  # per-token outputs (a server's stream) / only finished ones (LLM.generate,
        decode[final_only], mixed[final_only] = [], []  # bench_equal_latency)
        for _ in range(steps):
            t = time.perf_counter()
            eng.step(final_only=final_only)
            decode[final_only].append(time.perf_counter() - t)
        for _ in range(steps):
            t = time.perf_counter()
            for _ in range(arrivals):
                eng.add_request(f"r{n}", prompt(), params)
                n += 1
            t1 = time.perf_counter()
            before = eng.counters["num_batched_tokens"]
            eng.step(final_only=final_only)
            mixed[final_only].append(time.perf_counter() - t1)
            adds.append(t1 - t)
            if eng.scheduler.waiting:
                raise RuntimeError("arrivals were left waiting: the measurement assumes each is admitted at once")
            admitted += eng.counters["num_batched_tokens"] - before >= arrivals * prompt_len
    med = lambda ts: statistics.median(ts) * 1e3  # noqa: E731
    return {"mode": mode, "batch": batch, "arrivals_per_step": arrivals, "prompt_len": prompt_len, "steps": steps,
            "decode_step_host_ms": med(decode[False]), "mixed_step_host_ms": med(mixed[False]),
            "decode_step_host_ms_final_only": med(decode[True]), "mixed_step_host_ms_final_only": med(mixed[True]),
            "add_ms": med(adds), "mixed_over_decode": med(mixed[False]) / med(decode[False]),
            "steps_with_a_prefill": admitted, "final_batch": len(eng.scheduler.running),
            "overlapped_mixed_steps": eng.counters["num_overlapped_mixed_steps"]}


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[256, 448, 1024])
    ap.add_argument("--arrivals", type=int, nargs="+", default=[2], help="new requests per mixed step")
    ap.add_argument("--prompt-len", type=int, default=109)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                    help="sync: each step waits for its tokens; overlap_mixed: LLMEngine(overlap=True, "
                         "overlap_mixed=True), step N+1 scheduled and launched before N's tokens are read")
    ap.add_argument("--name", default="mixed_step_host_cpu")
    args = ap.parse_args(argv)
    if min(args.batch) < 1 or min(args.arrivals) < 1 or args.prompt_len < 1 or args.steps < 1:
        ap.error("--batch, --arrivals, --prompt-len and --steps must be positive")
    torch.set_num_threads(args.threads)
    rows = []
    for mode, b, a in itertools.product(args.modes, args.batch, args.arrivals):
        r = measure_mixed(b, a, args.prompt_len, args.steps, mode=mode)
        rows.append(r)
        print(f"{mode:13s} B={b:5d} +{a} arrivals x {args.prompt_len} tokens: host ms decode / mixed step "
              f"{r['decode_step_host_ms']:5.2f} / {r['mixed_step_host_ms']:5.2f} (per-token outputs), "
              f"{r['decode_step_host_ms_final_only']:5.2f} / {r['mixed_step_host_ms_final_only']:5.2f} "
              f"(final_only); add_request {r['add_ms']:.2f}")
    payload = {"threads": torch.get_num_threads(), "rows": rows}
    write_result("phase4_scheduler", args.name, payload)
    return payload


if __name__ == "__main__":
    main()
