"""AsyncEngine: the asyncio front end the server stands on. One background loop steps the engine; each request is
an async generator of RequestOutputs.

    engine = AsyncEngine.from_model("smollm2-135m")
    await engine.start()
    async for out in engine.generate(ids, SamplingParams(max_tokens=16), "req-1"):
        print(out.text_delta, end="")

NOTE (threads): the blocking `LLMEngine.step()` runs in a worker thread (`asyncio.to_thread`) so the event loop keeps
serving HTTP while the model computes. Only that loop touches the engine: new requests and aborts are queued (a
lock held for microseconds) and applied by the loop between steps, so `generate`/`abort` never wait for a step, and
a consumer that goes away (client disconnect: GeneratorExit / CancelledError) still gets its request aborted and its
blocks freed at the next step boundary.

NOTE (cost per step): the mailboxes, `generate` / `generate_batches` and delivery live in frontend.py, shared with
ProcessEngine (process_engine.py), which runs the same LLMEngine in its own process so that this loop's per-stream
work (chunks, JSON, socket writes) no longer competes with the step loop for one GIL.
"""
from __future__ import annotations

import asyncio
import inspect
import threading

from common.sampling import SamplingParams
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.frontend import EngineDeadError, StreamFrontEnd, _Stream  # noqa: F401  (re-exported)


HEAD_START_S = 0.005  # the longest the loop waits for a step's forward launch before delivering the previous outputs


class AsyncEngine(StreamFrontEnd):
    def __init__(self, engine: LLMEngine, model_name: str | None = None):
        super().__init__()
        self.engine = engine
        self.model_name = model_name or engine.loaded.source
        self._pending_adds: list[tuple[str, list[int], SamplingParams]] = []
        self._pending_aborts: list[str] = []
        self._abort_waiters: dict[str, list[asyncio.Future]] = {}
        self._lock = threading.Lock()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        try:
            self._step_has_hook = "on_forward" in inspect.signature(engine.step).parameters
        except (TypeError, ValueError):
            self._step_has_hook = False

    @classmethod
    def from_model(cls, model: str = "smollm2-135m", *, max_model_len: int | None = None,
                   kv_memory: str | int | None = None, device: str = "auto", **engine_kwargs) -> "AsyncEngine":
        engine = LLMEngine.from_model(model, device=device, max_model_len=max_model_len, kv_memory=kv_memory,
                                      **engine_kwargs)
        return cls(engine, model_name=model)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def is_running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.is_running:
            return
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="titan-engine-loop")

    async def shutdown(self) -> None:
        """Stop the loop after the current step; every unfinished request ends with finish_reason "abort"."""
        if self._task is None:
            return
        self._stopping = True
        self._wakeup.set()
        await self._task
        self._task = None
        with self._lock:
            self._pending_aborts.extend(self._queues)
        self._deliver(self._apply_pending())

    # -- requests ----------------------------------------------------------------------------------------------------
    def _check_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if request_id in self._queues or request_id in self.engine.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        self.engine.validate(list(prompt_token_ids), params)

    def _submit(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        with self._lock:
            self._pending_adds.append((request_id, list(prompt_token_ids), params))
        self._wakeup.set()

    def _abort_nowait(self, request_id: str) -> None:
        self._queues.pop(request_id, None)
        with self._lock:
            self._pending_aborts.append(request_id)
        if self._wakeup is not None:
            self._wakeup.set()

    async def abort(self, request_id: str) -> None:
        """Abort a request; returns once its blocks are free (its generator then ends with finish_reason "abort")."""
        if not self.is_running:
            with self._lock:
                self._pending_aborts.append(request_id)
            self._deliver(self._apply_pending())
            return
        fut = asyncio.get_running_loop().create_future()
        self._abort_waiters.setdefault(request_id, []).append(fut)
        with self._lock:
            self._pending_aborts.append(request_id)
        self._wakeup.set()
        await fut

    def stats(self) -> dict:
        s = self.engine.stats()
        with self._lock:
            s["num_waiting"] += sum(1 for r, *_ in self._pending_adds)
        return s

    # -- the loop ----------------------------------------------------------------------------------------------------
    def _apply_pending(self) -> list:
        """Add queued requests, then apply queued aborts (in the thread that owns the engine)."""
        with self._lock:
            adds, aborts = self._pending_adds, self._pending_aborts
            self._pending_adds, self._pending_aborts = [], []
        outs = []
        for rid, ids, params in adds:
            try:
                self.engine.add_request(rid, ids, params)
            except Exception as e:  # validated before queueing, so only a race (e.g. a duplicate id) gets here
                outs.append((rid, e))
        outs += [o for rid in aborts if (o := self.engine.abort_request(rid)) is not None]
        for rid in aborts:
            for fut in self._abort_waiters.pop(rid, []):
                if not fut.done():
                    fut.get_loop().call_soon_threadsafe(fut.set_result, None)
        return outs

    def _step_once(self, launched: threading.Event | None = None) -> list:
        """One engine step with the queued adds/aborts around it (in the worker thread). `launched` is set once the
        forward is in flight (engine.step's `on_forward` hook, where the engine has one) or, at the latest, when
        the step is over."""
        try:
            outs = self._apply_pending()
            if self.engine.has_unfinished():
                if launched is not None and self._step_has_hook:
                    outs += self.engine.step(on_forward=launched.set)
                else:
                    outs += self.engine.step()
            outs += self._apply_pending()  # aborts that arrived during the step free their blocks now
            return outs
        finally:
            if launched is not None:
                launched.set()

    async def _run(self) -> None:
        """Step while there is work. NOTE (overlap): the outputs of step k are handed to the generators after step
        k+1 is started in the worker thread; where engine.step has an `on_forward` hook, only once its forward is
        launched (or HEAD_START_S passed): the loop thread waits for that without the GIL, so the worker's
        scheduling and input building run first and the per-stream delivery work (chunks, writes) overlaps the
        device's forward instead of delaying its launch (bench_server_overhead.py --hook measures it)."""
        loop = asyncio.get_running_loop()
        pending: list = []
        try:
            while not self._stopping:
                with self._lock:
                    idle = not (self._pending_adds or self._pending_aborts)
                if idle and not self.engine.has_unfinished():
                    if pending:
                        self._deliver(pending)
                        pending = []
                        continue
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                launched = threading.Event()
                step = loop.run_in_executor(None, self._step_once, launched)
                if pending:
                    if self._step_has_hook:
                        launched.wait(HEAD_START_S)  # blocking on purpose: see the NOTE
                    self._deliver(pending)
                pending = []
                pending = await step
            self._deliver(pending)
        except Exception as e:  # a failed step: every waiting generator gets the error, new requests are refused
            dead = EngineDeadError(f"the engine loop failed: {type(e).__name__}: {e}")
            dead.__cause__ = e
            self._fail(e, dead)
