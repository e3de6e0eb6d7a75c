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

NOTE (cost per step): at a few hundred streams the event loop's share of a step is per-stream work, so each request
has a `_Stream` (a list and at most one waiting future) instead of an asyncio.Queue: `_deliver` appends and wakes a
consumer only if it is asleep, and `generate_batches` hands over everything that arrived since the consumer last
ran in one list (the server turns a list into one write). A consumer that lags behind by several steps catches up
in one wake-up instead of one per step (bench_server_overhead.py measures the whole server path).
"""
from __future__ import annotations

import asyncio
import inspect
import threading
from contextlib import aclosing
from typing import AsyncIterator

from common.sampling import SamplingParams
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.outputs import RequestOutput


HEAD_START_S = 0.005  # the longest the loop waits for a step's forward launch before delivering the previous outputs


class EngineDeadError(RuntimeError):
    """The background step loop failed; the engine serves no more requests (the cause is chained)."""


class _Stream:
    """One request's mailbox: outputs (or an exception) not yet taken, and the consumer's future while it waits."""
    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: list = []
        self.waiter: asyncio.Future | None = None

    def put(self, item) -> None:
        self.items.append(item)
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(None)

    async def take(self) -> list:
        """Everything delivered since the last take (waits while there is nothing)."""
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        items, self.items = self.items, []
        return items

    def __repr__(self) -> str:
        return f"_Stream(pending={len(self.items)}, waiting={self.waiter is not None})"


class AsyncEngine:
    def __init__(self, engine: LLMEngine, model_name: str | None = None):
        self.engine = engine
        self.model_name = model_name or engine.loaded.source
        self._queues: dict[str, _Stream] = {}
        self._pending_adds: list[tuple[str, list[int], SamplingParams]] = []
        self._pending_aborts: list[str] = []
        self._abort_waiters: dict[str, list[asyncio.Future]] = {}
        self._lock = threading.Lock()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._error: BaseException | None = None
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
    async def generate(self, prompt_token_ids: list[int], params: SamplingParams,
                       request_id: str) -> AsyncIterator[RequestOutput]:
        """Queue a request and yield its outputs as steps produce them; the last one has finished=True.

        Raises (before queueing) PromptTooLongError / ValueError / TypeError for a request that cannot run."""
        async with aclosing(self.generate_batches(prompt_token_ids, params, request_id)) as batches:
            async for batch in batches:
                for out in batch:
                    yield out

    async def generate_batches(self, prompt_token_ids: list[int], params: SamplingParams,
                               request_id: str) -> AsyncIterator[list[RequestOutput]]:
        """As generate, but yields lists: every output that arrived since the consumer last asked (one step's
        output, or several if the consumer fell behind), in order; the last list ends with the finished one."""
        if self._error is not None:
            raise EngineDeadError("the engine loop has failed; restart the server") from self._error
        if request_id in self._queues or request_id in self.engine.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        self.engine.validate(list(prompt_token_ids), params)
        await self.start()
        stream = _Stream()
        self._queues[request_id] = stream
        with self._lock:
            self._pending_adds.append((request_id, list(prompt_token_ids), params))
        self._wakeup.set()
        finished = False
        try:
            while True:
                items = await stream.take()
                if isinstance(items[-1], BaseException):  # an exception is always the last thing delivered
                    if len(items) > 1:
                        yield items[:-1]
                    finished = True  # nothing of it is left in the engine
                    raise items[-1]
                finished = items[-1].finished
                yield items
                if finished:
                    return
        finally:
            if not finished:  # the consumer left early (disconnect, cancel, break): abort and free the blocks
                self._abort_nowait(request_id)

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

    def _deliver(self, outputs: list) -> None:
        """Hand outputs (and (request_id, exception) pairs) to their generators; runs on the event loop."""
        for out in outputs:
            if isinstance(out, tuple):
                q = self._queues.pop(out[0], None)
                if q is not None:
                    q.put(out[1])
                continue
            q = self._queues.get(out.request_id)
            if q is not None:
                q.put(out)
                if out.finished:
                    self._queues.pop(out.request_id, None)

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
            self._error = e
            dead = EngineDeadError(f"the engine loop failed: {type(e).__name__}: {e}")
            dead.__cause__ = e
            for q in self._queues.values():
                q.put(dead)
            self._queues.clear()
