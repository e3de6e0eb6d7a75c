"""The stubbed engine and the clocks of bench_server_overhead.py (kept apart so that the engine process of
`--engine-process on` builds the same engine by name: build_stub_engine).

    eng = build_stub_engine(n=256, steps=40, gpu_ms=3.4, hook=True)   # an LLMEngine; eng.bench_clock times its steps

TokenWalk replaces the sampler (a walk through real text tokens, so detokenisation sees ordinary text), DeviceWait the
forward (bench_step_overhead.StubForward plus GIL-free "device" time), StepClock wraps engine.step and the
detokenizer, SendClock is the ASGI middleware that timestamps every body write, MarkedProcessEngine a ProcessEngine
that samples this process's CPU time at every message from the engine process.
"""
from __future__ import annotations

import bisect
import inspect
import time

import torch

from phase4_scheduler.bench_step_overhead import StubForward, tiny_loaded
from phase4_scheduler.detokenizer import IncrementalDetokenizer
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.process_engine import ProcessEngine

SAMPLE_TEXT = ("The quick brown fox jumps over the lazy dog. In 1905, Einstein published four papers; "
               "their ideas (relativity, quanta) changed physics — and café culture in Zürich, too! "
               "def main():\n    return {'ok': True}  # code, numbers 3.14159 and emoji 🙂 in a stream. ")


class TokenWalk:
    """Replaces the engine's sampler: request i's k-th token is the text's token (i * 7 + k) mod len (no argmax)."""

    def __init__(self, tokenizer):
        self.ids = tokenizer.encode(SAMPLE_TEXT * 4)
        self.pos: dict[str, int] = {}

    def __call__(self, logits, reqs, process: bool = False, greedy=None):
        ids, n, out = self.ids, len(self.ids), []
        for r in reqs:
            k = self.pos.get(r.request_id, hash(r.request_id) % n)
            out.append(ids[k % n])
            self.pos[r.request_id] = k + 1
        return out


class StepClock:
    """Wraps engine.step (in the worker thread) and the detokenizer's methods to timestamp each step."""

    def __init__(self, engine: LLMEngine, hook: bool = False):
        self.rows: list[tuple[float, float, int, float, float]] = []  # (start, end, running, detok s, CPU s)
        self.detok = 0.0
        orig = engine.step
        self.engine, self.orig = engine, orig

        def step(*a, **k):
            d0, t, cpu = self.detok, time.perf_counter(), time.process_time()
            running = len(engine.scheduler.running)
            out = orig(*a, **k)
            self.rows.append((t, time.perf_counter(), running, self.detok - d0, cpu))
            return out

        def step_with_hook(*a, on_forward=None, **k):  # what the proposed engine.step(on_forward=...) does
            engine.runner.execute.on_forward = on_forward
            try:
                return step(*a, **k)
            finally:
                engine.runner.execute.on_forward = None
        # the wrappers take what the engine's step takes (engine_core reads the signature: on_forward, increments),
        # except on_forward without `hook` (the bench's "no hook" engine)
        sig = inspect.signature(orig)
        step.__signature__ = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "on_forward"])
        step_with_hook.__signature__ = sig
        engine.step = step_with_hook if hook else step

    def wrap_detok(self, cls) -> None:
        """Time the detokenizer's methods (patched on the class; unwrap() restores them, so runs do not nest)."""
        self.unwrapped = [(cls, n, getattr(cls, n)) for n in ("add_token", "delta") if hasattr(cls, n)]
        for _, name, fn in self.unwrapped:
            def wrapper(*a, _fn=fn, **k):
                t = time.perf_counter()
                out = _fn(*a, **k)
                self.detok += time.perf_counter() - t
                return out
            setattr(cls, name, wrapper)

    def unwrap(self) -> None:
        for cls, name, fn in getattr(self, "unwrapped", []):
            setattr(cls, name, fn)
        self.unwrapped = []


class SendClock:
    """ASGI middleware: timestamps every non-empty body message the app sends (one SSE event, or a batch)."""

    def __init__(self, app):
        self.app, self.times = app, []

    async def __call__(self, scope, receive, send):
        async def timed_send(msg):
            if msg.get("type") == "http.response.body" and msg.get("body"):
                self.times.append((time.perf_counter(), msg["body"].count(b"data: ")))
            await send(msg)
        await self.app(scope, receive, timed_send)


class DeviceWait(StubForward):
    """StubForward plus `ops` small torch ops (the runner's input copies, graph replay, sampler launches) and a
    `gpu_ms` sleep standing in for waiting on the device: both release the GIL, as torch and a CUDA sync do, so the
    event loop's thread competes for it as on a GPU host. The device is busy from the launch on: work the
    `on_forward` hook does in this thread (ProcessEngine's engine process pickles and sends the previous step's
    outputs there) overlaps it, and only the rest of `gpu_ms` is waited for, as a sync after the hook would."""

    def __init__(self, max_batch: int, vocab: int, gpu_ms: float, ops: int = 12):
        super().__init__(max_batch, vocab)
        self.gpu_s, self.ops, self.x = gpu_ms / 1e3, ops, torch.zeros(8)
        self.on_forward = None  # set per step by StepClock when the engine.step hook is emulated

    def __call__(self, *args):
        out = super().__call__(*args)
        if self.gpu_s:
            for _ in range(self.ops):
                self.x.add_(1)
        launched = time.perf_counter()
        if self.on_forward is not None:  # the forward is "launched": the device is busy from here
            self.on_forward()
        if self.gpu_s:
            time.sleep(max(0.0, self.gpu_s - (time.perf_counter() - launched)))
        return out


def load_tokenizer():
    from common.model_loader import resolve_weights

    tok = resolve_weights("smollm2-135m", random_weights=True)[2]
    if tok is None:
        raise SystemExit("needs the SmolLM2 GGUF for its tokenizer (make setup)")
    return tok


def build_stub_engine(n: int, steps: int, gpu_ms: float = 0.0, hook: bool = False, ops: int = 12, tokenizer=None,
                      prompt_len_hint: int = 16) -> LLMEngine:
    """The measured engine: SmolLM2's tokenizer over a stubbed 1-layer model (DeviceWait forward, TokenWalk
    sampler), its steps and detokenizer timed by `engine.bench_clock` (a StepClock). Module-level, so that
    ProcessEngine can build it in the engine process."""
    torch.set_num_threads(1)  # as main() does in-process: no intra-op pool spinning on the other core
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
    loaded = tiny_loaded(tokenizer.vocab_size, tokenizer)
    blocks = n * (-(-(prompt_len_hint + steps + 40 + 32) // 16))
    eng = LLMEngine(loaded, max_num_seqs=n, max_num_batched_tokens=max(512, n * 32), num_blocks=blocks,
                    block_size=16, max_model_len=4096)
    eng.runner.execute = DeviceWait(n, 64, gpu_ms, ops)  # [B, 64] logits, never read: TokenWalk samples
    eng.sampler = TokenWalk(tokenizer)
    eng.bench_clock = StepClock(eng, hook)  # before AsyncEngine / EngineCore look for engine.step's on_forward hook
    eng.bench_clock.wrap_detok(IncrementalDetokenizer)
    hold_until_all_arrived(eng, n)
    return eng


def hold_until_all_arrived(engine: LLMEngine, n: int) -> None:
    """The engine reports no work (so its loop does not step) until n requests have been added; from then on as
    usual. Without it the engine, if it runs ahead of the HTTP side (its own process), finishes the first requests
    before the last ones arrive, and no step has all N streams decoding: the steady window would be empty."""
    has_unfinished, released = engine.has_unfinished, []

    def gated() -> bool:
        if not released:
            if len(engine.requests) < n:
                return False
            released.append(True)
        return has_unfinished()
    engine.has_unfinished = gated


def step_rows(engine) -> list[tuple]:
    """(ProcessEngine.call) the engine process's step clock."""
    return engine.bench_clock.rows


class MarkedProcessEngine(ProcessEngine):
    """ProcessEngine that notes (wall time, this process's CPU time) at every message from the engine process."""

    def __init__(self, *args, **kwargs):
        self.marks: list[tuple[float, float]] = []
        super().__init__(*args, **kwargs)

    def _handle(self, msg) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))
        super()._handle(msg)

    def cpu_at(self, t: float) -> float:
        """This process's CPU time at wall time t (linear between the marks around it)."""
        i = bisect.bisect_left(self.marks, (t, float("-inf")))
        if i == 0 or i == len(self.marks):
            return self.marks[min(i, len(self.marks) - 1)][1]
        (t0, c0), (t1, c1) = self.marks[i - 1], self.marks[i]
        return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1
