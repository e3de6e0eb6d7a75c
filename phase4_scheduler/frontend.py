"""What the server's two engine front ends share: one mailbox per request, the consumer side of `generate` /
`generate_batches`, delivery of outputs to the mailboxes, and the dead state.

    AsyncEngine    (async_engine.py)    the LLMEngine steps in a worker thread of this process
    ProcessEngine  (process_engine.py)  the LLMEngine steps in its own process (engine_core.py), outputs come by pipe

A subclass says how a request reaches its engine: `start()`, `_check_request` (raise before anything is queued),
`_submit` (hand it over) and `_abort_nowait` (a consumer left: drop its mailbox, abort without waiting); and it
calls `_deliver` with each step's outputs and `_fail` when its engine is gone.

NOTE (cost per step): at a few hundred streams the event loop's share of a step is per-stream work, so each request
has a `_Stream` (a list and at most one waiting future) instead of an asyncio.Queue: `_deliver` appends and wakes a
consumer only if it is asleep, and `generate_batches` hands over everything that arrived since the consumer last
ran in one list (the server turns a list into one write). A consumer that lags behind by several steps catches up
in one wake-up instead of one per step (bench_server_overhead.py measures the whole server path).
"""
from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import AsyncIterator

from common.sampling import SamplingParams
from phase4_scheduler.outputs import RequestOutput


class EngineDeadError(RuntimeError):
    """The engine failed (its step loop raised, or its process died); it serves no more requests (cause chained)."""


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


class StreamFrontEnd:
    """The request side every engine front end shares (see the module docstring for what a subclass provides)."""

    _dead_message = "the engine loop has failed; restart the server"  # what a request gets once the engine is dead

    def __init__(self) -> None:
        self._queues: dict[str, _Stream] = {}
        self._error: BaseException | None = None  # why the engine died (None while it lives)
        self._dead: EngineDeadError | None = None  # what the open streams were given then

    # -- health ------------------------------------------------------------------------------------------------------
    @property
    def errored(self) -> bool:
        """True once the engine is dead: new requests are refused and /health reports unhealthy."""
        return self._error is not None

    @property
    def dead_error(self) -> EngineDeadError | None:
        """The error open streams got when the engine died (None while it lives)."""
        return self._dead

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
            raise EngineDeadError(self._dead_message) from self._error
        self._check_request(request_id, prompt_token_ids, params)
        await self.start()
        stream = self._open_stream(request_id, prompt_token_ids)
        self._queues[request_id] = stream
        self._submit(request_id, prompt_token_ids, params)
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

    def _open_stream(self, request_id: str, prompt_token_ids: list[int]) -> _Stream:
        return _Stream()

    # -- delivery ----------------------------------------------------------------------------------------------------
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

    def _fail(self, cause: BaseException, dead: EngineDeadError) -> None:
        """The engine is gone: every open stream gets `dead`, new requests are refused from now on."""
        self._error, self._dead = cause, dead
        for q in self._queues.values():
            q.put(dead)
        self._queues.clear()

    # -- what a subclass provides ------------------------------------------------------------------------------------
    async def start(self) -> None:
        raise NotImplementedError

    def _check_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        raise NotImplementedError

    def _submit(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        raise NotImplementedError

    def _abort_nowait(self, request_id: str) -> None:
        raise NotImplementedError
