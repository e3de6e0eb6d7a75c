"""Host CPU per stream per step on each side of ProcessEngine, measured apart (no second process, no HTTP client):

    python -m phase4_scheduler.bench_stream_host                 # N = 256 streams, outputs 40 and 400 tokens long

    engine   the engine process's work per step: LLMEngine.step on the stubbed engine of bench_server_overhead
             (bench_step_overhead.StubForward, TokenWalk over real text, SmolLM2's tokenizer), engine_core.pack, the
             pickled message with engine.stats(); A/B: `step()` (RequestOutputs cut down by pack) against
             `step(increments=True)` (the tuples directly), alternating, at outputs already L tokens long
    front    the server process's work per step: ProcessEngine._handle of a step's message -> N mailboxes -> N
             consumers running Server.stream inside an EventStream whose ASGI send does nothing (what
             bench_server_overhead adds on top: the FastAPI/Starlette middleware, the client, GC of all that)

NOTE: both are CPU time (time.process_time) over many steps in one process, so they move less with the shared VM's
neighbours than bench_server_overhead's wall-clock windows; each figure is the median of --repeats runs.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import pickle
import statistics
import time
from collections import deque

import torch

from common.bench import write_result
from common.sampling import SamplingParams


def engine_us(n: int, length: int, increments: bool, steps: int = 30, tokenizer=None) -> float:
    """us of CPU per stream per step in the engine process (step, pack, pickle incl. stats) at outputs `length`
    tokens long."""
    from phase4_scheduler.engine_core import pack
    from phase4_scheduler.server_overhead_stubs import build_stub_engine

    eng = build_stub_engine(n, length + steps + 20, 0.0, True, 12, tokenizer)
    eng.bench_clock.unwrap()
    for i in range(n):
        eng.add_request(f"cmpl-{i:032x}", [1 + (i * 7 + j) % 1000 for j in range(16)],
                        SamplingParams(max_tokens=length + steps + 20, temperature=0, ignore_eos=True))
    kw = {"increments": True} if increments else {}
    while min(len(r.output_token_ids) for r in eng.requests.values()) < length or eng.scheduler.waiting:
        eng.step(**kw)
    gc.collect()
    t = time.process_time()
    for _ in range(steps):
        pickle.dumps(("out", 5, pack(eng.step(on_forward=None, **kw)), [], eng.stats()))
    return (time.process_time() - t) / steps / n * 1e6


def front_us(n: int, length: int, steps: int = 100) -> float:
    """us of CPU per stream per step in the server process's own path (see the module docstring), with `length`
    tokens already delivered per stream."""
    from phase4_scheduler.frontend import StreamFrontEnd
    from phase4_scheduler.process_engine import ProcessEngine
    from phase4_scheduler.server import Server
    from phase4_scheduler.sse import EventStream

    class Front(ProcessEngine):  # the real delivery code, no engine process behind it
        max_model_len = 1 << 20

        def __init__(self):
            StreamFrontEnd.__init__(self)
            self._adds, self._abort_waiters, self._calls = deque(), deque(), {}
            self._closed, self._reading, self._bye, self._stats, self.model_name = False, True, None, {}, "bench"

        async def start(self): pass
        def _check_request(self, *a): pass
        def _submit(self, *a): pass
        async def abort(self, rid): pass

    async def run() -> float:
        eng = Front()
        srv = Server(eng, model_name="bench")

        async def send(msg): pass
        async def receive(): await asyncio.Event().wait()

        rids = [f"cmpl-{i:032x}" for i in range(n)]
        tasks = [asyncio.ensure_future(EventStream(srv.stream([1] * 16, SamplingParams(max_tokens=steps + 10), rid,
                                                              "bench", False, True))({"type": "http"}, receive, send))
                 for rid in rids]
        for _ in range(5):
            await asyncio.sleep(0)
        for rid in rids:
            q = eng._queues[rid]
            q.out_ids, q.text = [5] * length, "x" * (4 * length)
        words = [" the", " quick", " brown", " fox", "."]

        def message(k: int, last: bool = False) -> tuple:
            return ("out", 0, [(rid, [100 + k], words[(k + i) % 5], "length" if last else None, None, 1.0, 0, None, None)
                               for i, rid in enumerate(rids)], [], {})

        t = None
        for k in range(steps):
            if k == 5:
                t = time.process_time()
            eng._handle(message(k))
            await asyncio.sleep(0)  # the consumers run
            await asyncio.sleep(0)
        spent = time.process_time() - t
        eng._handle(message(steps, last=True))
        await asyncio.gather(*tasks)
        return spent / (steps - 5) / n * 1e6

    gc.collect()
    return asyncio.run(run())


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--lengths", type=int, nargs="+", default=[40, 400])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--name", default="stream_host_cpu")
    args = ap.parse_args(argv)
    from phase4_scheduler.server_overhead_stubs import load_tokenizer

    torch.set_num_threads(1)
    tok, rows = load_tokenizer(), []
    for length in args.lengths:
        runs: dict[str, list[float]] = {"engine_outputs": [], "engine_increments": [], "front": []}
        for _ in range(args.repeats):  # alternating
            runs["engine_outputs"].append(engine_us(args.streams, length, False, tokenizer=tok))
            runs["engine_increments"].append(engine_us(args.streams, length, True, tokenizer=tok))
            runs["front"].append(front_us(args.streams, length))
        row = {"streams": args.streams, "output_len": length,
               **{f"{k}_us": statistics.median(v) for k, v in runs.items()},
               **{f"{k}_us_runs": [round(x, 3) for x in v] for k, v in runs.items()}}
        rows.append(row)
        print(f"N={args.streams} L={length}: engine process {row['engine_outputs_us']:.2f} us (RequestOutputs) -> "
              f"{row['engine_increments_us']:.2f} us (increments); server process {row['front_us']:.2f} us "
              "per stream per step")
    payload = {"repeats": args.repeats, "rows": rows}
    write_result("phase4_scheduler", args.name, payload)
    return payload


if __name__ == "__main__":
    main()
