"""Host cost per engine step of the SERVER path: N concurrent SSE streams through the real FastAPI app, model stubbed.

    python -m phase4_scheduler.bench_server_overhead                          # N = 64, 256 streams
    python -m phase4_scheduler.bench_server_overhead --label before --name server_overhead_cpu_before
    python -m phase4_scheduler.bench_server_overhead --hook --engine-process both --name server_overhead_cpu_process

Offline, an engine step around a stubbed forward costs ~1-2 ms of Python at a few hundred requests
(bench_step_overhead.py). `titan serve` on the H100 ran ~30 ms per decode step at ~200 concurrent streams, so the
difference is the server path: the asyncio loop that steps the engine in a worker thread, detokenisation, one
RequestOutput -> OpenAI chunk -> SSE event per stream per step, the per-request generators and queues, ASGI sends and
metrics. This script measures that path on the CPU: a real LLMEngine (SmolLM2's tokenizer, a 1-layer random Llama
whose `runner.execute` is bench_step_overhead.StubForward and whose sampler is replaced by a walk through real
ShareGPT-like text tokens, so detokenisation sees ordinary text), wrapped in AsyncEngine + create_app, driven
in-process by httpx.AsyncClient over ASGITransport with N streaming /v1/completions requests (include_usage).

Each engine step is timestamped, and an ASGI middleware timestamps every body write; the steady window is the
steps where all N streams are decoding (the engine starts stepping once all N requests have arrived:
server_overhead_stubs.hold_until_all_arrived). Per step:

    cpu_ms       CPU time of the whole process (event loop + step thread) per step: the host cost, and the figure
                 least disturbed by other work on the machine (wall times below move with the VM's neighbours)
    delivered_step_ms  the window's wall time per N SSE events written (the step time a client sees; the engine
                 loop may run ahead of slow consumers and let outputs pile up, so step_ms alone can flatter)
    step_ms      wall time between consecutive engine step starts
    engine_ms    LLMEngine.step itself (schedule, inputs, stub forward, sampler stub, update, outputs)
    detok_ms     the part of engine_ms in the detokenizer (IncrementalDetokenizer methods)
    loop_ms      step_ms - engine_ms: the event loop's work (delivery to N generators, chunk JSON, SSE, ASGI sends,
                 metrics, the thread hop) that the step loop waits for
    and per-token micro-costs x N: chunk_ms (RequestOutput -> chunk bytes as server.py builds them) and
    metrics_ms (one observation per token).

`--gpu-ms 3.4` adds a GIL-free sleep (and a few small torch ops) to the stub forward, as waiting for an H100's
decode step would: the event loop then works while the "device" does, and the figure shows how much of the
server's work that overlap hides. Each config runs --repeats times; the run with the median CPU per step is kept.

`--engine-process on` measures the same server over ProcessEngine (process_engine.py: the engine in its own
process, as `titan serve --engine-process on` runs it); `both` alternates in-process and process runs per repeat.
The stubbed engine is then built in the engine process (build_stub_engine, pickled by name), its step clock comes
back through ProcessEngine.call, and the CPU figures add the two processes: `cpu_ms_mean` is all host CPU (both
processes) over the window per step, `front_cpu_ms` the server process's part (sampled at every message from the
engine process); in that mode `cpu_ms` is `cpu_ms_mean` (in-process it stays the per-step median).

NOTE: the client side of ASGITransport buffers each response until it completes, so nothing of the client's work
lands inside the steady window; what is measured is the server alone (no sockets: uvicorn's own per-chunk cost and
the kernel's write() come on top in a real deployment). Times are medians over the window (one 2-core VM).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time

import torch
from tqdm import tqdm

from common.bench import load_result, write_result
from phase4_scheduler.async_engine import AsyncEngine
from phase4_scheduler.server import create_app
from phase4_scheduler.server_overhead_stubs import (DeviceWait, MarkedProcessEngine, SendClock, StepClock,  # noqa: F401
                                                    TokenWalk, build_stub_engine, load_tokenizer, step_rows)


async def drive(app, n: int, max_tokens: int) -> list[bytes]:
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        async def one(i: int) -> bytes:
            r = await client.post("/v1/completions", json={
                "model": "bench", "prompt": f"request {i}: tell me a story", "max_tokens": max_tokens,
                "stream": True, "stream_options": {"include_usage": True}, "temperature": 0, "ignore_eos": True})
            assert r.status_code == 200, r.text
            return r.content
        return await asyncio.gather(*(one(i) for i in range(n)))


def micro_chunk_us(reps: int = 4000) -> float:
    """us per token for the server's chunk building alone (text -> OpenAI chunk -> SSE bytes): the pre-rendered
    sse.ChunkTemplate where the server has it, else the dict + json.dumps path."""
    from phase4_scheduler import protocol as P
    from phase4_scheduler import sse as S

    make = lambda text: {**P.completion_chunk("cmpl-0123456789abcdef", "bench", 1700000000, text, None),  # noqa
                         "usage": None}
    encode = S.ChunkTemplate(make) if hasattr(S, "ChunkTemplate") else (lambda text: S.sse(make(text)))
    t = time.perf_counter()
    for _ in range(reps):
        encode(" word")
    return (time.perf_counter() - t) / reps * 1e6


def micro_metrics_us(reps: int = 4000) -> float:
    """us per token for the server's metrics (per-token observe before; observe_n per output list after)."""
    from phase4_scheduler.metrics import ServerMetrics

    m = ServerMetrics()
    observe = (lambda v: m.itl.observe_n(v, 1)) if hasattr(m.itl, "observe_n") else m.itl.observe
    t = time.perf_counter()
    for _ in range(reps):
        observe(0.003)
        m.generation_tokens.inc(1)
    return (time.perf_counter() - t) / reps * 1e6


def measure(n: int, tokenizer, steps: int, gpu_ms: float = 0.0, hook: bool = False, ops: int = 12,
            process: bool = False) -> dict:
    max_tokens = steps + 40
    if process:
        eng, front = None, MarkedProcessEngine(build_stub_engine, dict(n=n, steps=steps, gpu_ms=gpu_ms, hook=hook,
                                                                       ops=ops), model_name="bench")
    else:
        eng = build_stub_engine(n, steps, gpu_ms, hook, ops, tokenizer)
        front = AsyncEngine(eng, model_name="bench")
    app = SendClock(create_app(front, served_model_name="bench"))
    gc.collect()
    gc.freeze()

    async def main():
        await front.start()
        try:
            bodies = await drive(app, n, max_tokens)
            rows = await front.call(step_rows) if process else list(eng.bench_clock.rows)
        finally:
            await front.shutdown()
        return bodies, rows

    t0 = time.perf_counter()
    try:
        bodies, rows = asyncio.run(main())
    finally:
        gc.unfreeze()
        if eng is not None:
            eng.bench_clock.unwrap()
    wall = time.perf_counter() - t0
    for b in bodies:  # every stream got its tokens and ended properly
        assert b.endswith(b"data: [DONE]\n\n") and f'"completion_tokens":{max_tokens}'.encode() in b, b[-300:]
    full = [i for i, r in enumerate(rows) if r[2] == n]
    win = [i for i in full[3:-2] if i + 1 < len(rows)]  # all N decoding; skip the first steps and the last
    if len(win) < 5:
        raise RuntimeError(f"only {len(win)} steady steps with {n} running; raise --steps")
    step = [rows[i + 1][0] - rows[i][0] for i in win]
    engine_s = [rows[i][1] - rows[i][0] for i in win]
    detok = [rows[i][3] for i in win]
    cpu = [rows[i + 1][4] - rows[i][4] for i in win]  # CPU seconds of the engine's process (all threads) per step
    front_cpu = sum(front.cpu_at(rows[i + 1][0]) - front.cpu_at(rows[i][0]) for i in win) if process else 0.0
    cpu_mean_ms = (sum(cpu) + front_cpu) / len(win) * 1e3  # all host CPU, both processes where there are two
    t_a, t_b = rows[win[0]][0], rows[win[-1]][0]
    sent = sum(k for t, k in app.times if t_a <= t < t_b)  # SSE events that reached the ASGI server meanwhile
    delivered_ms = (t_b - t_a) / (sent / n) * 1e3  # wall per N delivered events: the step cost the client sees
    med = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    chunk_us, metrics_us = micro_chunk_us(), micro_metrics_us()
    row = {"streams": n, "gpu_ms": gpu_ms, "ops": ops if gpu_ms else 0, "hook": hook, "engine_process": process,
           "steady_steps": len(win), "cpu_ms": cpu_mean_ms if process else med(cpu), "cpu_ms_mean": cpu_mean_ms,
           "front_cpu_ms": front_cpu / len(win) * 1e3 if process else None,
           "step_ms": med(step), "delivered_step_ms": delivered_ms,
           "step_ms_mean": statistics.mean(step) * 1e3,
           "engine_ms": med(engine_s), "detok_ms": med(detok), "loop_ms": med(step) - med(engine_s),
           "chunk_ms_est": chunk_us * n / 1e3, "metrics_ms_est": metrics_us * n / 1e3,
           "chunk_us_per_token": chunk_us, "metrics_us_per_token": metrics_us,
           "us_per_stream_step": med(step) * 1e3 / n, "total_wall_s": wall, "max_tokens": max_tokens}
    return row


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--steps", type=int, default=40, help="decode steps per stream (steady window ~ steps)")
    ap.add_argument("--gpu-ms", type=float, nargs="+", default=[0.0, 3.4],
                    help="simulated device time per step (a GIL-free sleep in the stub forward); 0 = none")
    ap.add_argument("--ops", type=int, default=12,
                    help="with --gpu-ms: small torch ops per step, each releasing the GIL (a graphed decode step "
                         "launches ~12; an eager 30-layer step several hundred)")
    ap.add_argument("--hook", action="store_true",
                    help="emulate the proposed engine.step(on_forward=...) hook (AsyncEngine then delivers step k's "
                         "outputs once step k+1's forward is launched)")
    ap.add_argument("--engine-process", choices=["off", "on", "both"], default="off",
                    help="the engine in this process (AsyncEngine, off), in its own process (ProcessEngine, on), or "
                         "both, alternating run by run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per config; the run with the median step is kept")
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="sys.setswitchinterval (s) for the run (default: Python's 0.005)")
    ap.add_argument("--label", default="after", help="what code this measures (before/after a change)")
    ap.add_argument("--name", default="server_overhead_cpu")
    ap.add_argument("--compare", default="server_overhead_cpu_before", help="a results JSON to compare against")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tok = load_tokenizer()
    rows = []
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.engine_process]
    for n, g in [(n, g) for g in args.gpu_ms for n in args.streams]:
        runs: dict[bool, list[dict]] = {m: [] for m in modes}
        for _ in tqdm(range(args.repeats), desc=f"N={n} gpu={g}", leave=False):
            for m in modes:  # alternating, so that drifts of the machine hit both alike
                runs[m].append(measure(n, tok, args.steps, gpu_ms=g, hook=args.hook, ops=args.ops, process=m))
        for m in modes:
            ordered = sorted(runs[m], key=lambda r: r["cpu_ms"])
            r = ordered[len(ordered) // 2]  # the median run (by CPU per step)
            r["cpu_ms_runs"] = [x["cpu_ms"] for x in ordered]
            r["delivered_step_ms_runs"] = [x["delivered_step_ms"] for x in ordered]
            r["switch_interval_s"] = sys.getswitchinterval()
            rows.append(r)
            print(f"N={n:4d} gpu {g:3.1f} ms {'process' if m else 'thread '}: CPU {r['cpu_ms']:5.2f} ms/step (all "
                  f"{r['cpu_ms_mean']:5.2f}) | step {r['step_ms']:6.2f} ms = engine {r['engine_ms']:6.2f} (detok "
                  f"{r['detok_ms']:5.2f}) + loop {r['loop_ms']:6.2f} | est. chunk {r['chunk_ms_est']:5.2f}, "
                  f"metrics {r['metrics_ms_est']:4.2f} | delivered: {r['delivered_step_ms']:6.2f} ms per N events")
        if len(modes) == 2:
            a, b = rows[-2], rows[-1]
            print(f"N={n:4d} gpu {g:3.1f} ms: delivered step {a['delivered_step_ms']:6.2f} (thread) -> "
                  f"{b['delivered_step_ms']:6.2f} ms (process), {a['delivered_step_ms'] / b['delivered_step_ms']:.2f}x;"
                  f" host CPU per step {a['cpu_ms_mean']:5.2f} -> {b['cpu_ms_mean']:5.2f} ms")
    payload = {"label": args.label, "hook": args.hook, "engine_process": args.engine_process,
               "repeats": args.repeats, "steps": args.steps, "rows": rows}
    before = load_result("phase4_scheduler", args.compare) if args.compare != args.name else None
    if before is not None:
        payload["before"] = {"label": before.get("label"), "rows": before["rows"],
                             "commit": before.get("provenance", {}).get("git_commit")}
        old = {(r["streams"], r.get("gpu_ms", 0.0), r.get("engine_process", False)): r for r in before["rows"]}
        for r in rows:
            if (r["streams"], r["gpu_ms"], r["engine_process"]) in old:
                o = old[(r["streams"], r["gpu_ms"], r["engine_process"])]
                r["speedup_vs_before"] = o["delivered_step_ms"] / r["delivered_step_ms"]
                if "cpu_ms" in o:
                    r["cpu_speedup_vs_before"] = o["cpu_ms"] / r["cpu_ms"]
                    print(f"N={r['streams']:4d} gpu {r['gpu_ms']:3.1f} ms: CPU per step {o['cpu_ms']:6.2f} -> "
                          f"{r['cpu_ms']:6.2f} ms ({r['cpu_speedup_vs_before']:.2f}x)")
                print(f"N={r['streams']:4d} gpu {r['gpu_ms']:3.1f} ms: delivered step {o['delivered_step_ms']:6.2f} -> "
                      f"{r['delivered_step_ms']:6.2f} ms ({r['speedup_vs_before']:.2f}x); engine-loop step "
                      f"{o['step_ms']:6.2f} -> {r['step_ms']:6.2f} ms")
    write_result("phase4_scheduler", args.name, payload)
    return payload


if __name__ == "__main__":
    main()
