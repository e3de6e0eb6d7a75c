"""ProcessEngine: AsyncEngine's interface over an engine core in its own process (engine_core.py), the way vLLM V1
splits the API server from the engine core.

    engine = ProcessEngine.from_model("smollm2-135m", device="cuda")   # spawns the engine process, waits for it
    await engine.start()
    async for out in engine.generate(ids, SamplingParams(max_tokens=16), "req-1"):
        print(out.text_delta, end="")
    await engine.shutdown()

NOTE (why): with AsyncEngine the step loop (a worker thread) and the server's per-stream work (delivery, chunk
JSON, SSE writes, uvicorn) share one interpreter and so one GIL: at a few hundred streams the HTTP side delays the
next step's launch, and the step delays the writes. Here the engine steps in another process with its own GIL; this
process only turns each step's message into RequestOutputs for the mailboxes (frontend.py, shared with AsyncEngine).

NOTE (what crosses the pipe): to the child, one pickled command per add (prompt ids + SamplingParams), abort, call
or shutdown, written from the event loop; from the child, one message per step: the step's outputs as tuples of
increments (engine_core.pack: id, new token ids, text delta, finish/stop reason, first-token time, preemptions),
the number of commands applied (acknowledging adds and aborts) and engine.stats(). The running totals
(output_token_ids, text) are kept here per stream (each output shares the stream's token list and copies its
prefix only if read: RequestOutput.sharing), so a message grows with the batch, not with the sequences; the
final `text` equals the engine's (the joined deltas); a non-final one is the text sent so far (the engine's may
hold back a possible stop-string prefix). `arrival_time` is this process's submit time (the same monotonic clock).

NOTE (reading): the read end of the child's pipe is registered with the event loop (`loop.add_reader`): no reader
thread, no thread hop; each wake-up drains every message that is there. Requests are validated here, before they
are sent, by LLMEngine.validate itself run on the facts the child reported (engine_core.EngineFacts).

NOTE (death): a child that fails sends its exception and exits; one that is killed closes the pipe. Either way every
open stream gets EngineDeadError, new requests are refused, `errored` turns True (the server's /health answers 503)
and pending aborts return (nothing is left to free).
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import pickle
import signal
import weakref
from collections import deque

from common.sampling import SamplingParams
from phase4_scheduler.engine_core import build_llm_engine, run_engine_core
from phase4_scheduler.frontend import EngineDeadError, StreamFrontEnd, _Stream
from phase4_scheduler.outputs import RequestOutput

log = logging.getLogger("titan.engine")
SHUTDOWN_TIMEOUT_S = 30.0  # how long shutdown waits for the child's last message, then for it to exit


class _RemoteStream(_Stream):
    """A mailbox plus the running totals of its request (the child sends increments)."""
    __slots__ = ("prompt", "out_ids", "text", "logprobs", "prompt_logprobs")

    def __init__(self, prompt: list[int]) -> None:
        super().__init__()
        self.prompt, self.out_ids, self.text, self.logprobs, self.prompt_logprobs = prompt, [], "", None, None


def _reap(proc, *conns) -> None:
    """Make sure the child is gone and the pipes are closed (also run when a ProcessEngine is garbage-collected)."""
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    for c in conns:
        c.close()


def _rebuild(type_name: str, text: str) -> BaseException:
    """An add that failed in the child: the same exception type where it is one a request can raise."""
    from common.errors import PromptTooLongError

    kinds = {"ValueError": ValueError, "TypeError": TypeError, "PromptTooLongError": PromptTooLongError}
    return kinds.get(type_name, RuntimeError)(text if type_name in kinds else f"{type_name}: {text}")


def _child_error(msg: tuple) -> BaseException:
    """The child's ("error", pickled exception or None, type name, text, traceback) as an exception to raise."""
    _, blob, type_name, text, tb = msg
    try:
        exc = pickle.loads(blob) if blob is not None else None
    except Exception:  # noqa: BLE001
        exc = None
    exc = exc if isinstance(exc, BaseException) else RuntimeError(f"{type_name}: {text}")
    exc.add_note(f"(raised in the engine process)\n{tb}")
    return exc


class ProcessEngine(StreamFrontEnd):
    _dead_message = "the engine process is gone; restart the server"

    def __init__(self, build=build_llm_engine, build_kwargs: dict | None = None, model_name: str | None = None,
                 warmup: bool = False):
        """Spawn the engine process: `build(**build_kwargs)` makes its engine (both must pickle: a module-level
        function); `warmup` runs LLMEngine.warmup() there before it reports ready. Returns once it is ready; raises
        what the child raised (e.g. ValueError for a KV pool that holds no block) if it could not start."""
        super().__init__()
        ctx = mp.get_context("spawn")
        cmd_child, self._cmd = ctx.Pipe(duplex=False)
        self._out, out_child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=run_engine_core, name="titan-engine-core", daemon=True,
                                 args=(cmd_child, out_child, build, dict(build_kwargs or {}), warmup))
        self._proc.start()
        cmd_child.close()
        out_child.close()  # the child holds the only write end now: its exit is an EOF here
        self._finalizer = weakref.finalize(self, _reap, self._proc, self._cmd, self._out)
        self._num_sent = 0  # commands sent; the child reports how many it applied
        self._adds: deque[int] = deque()  # numbers of the adds it has not applied yet (they count as waiting)
        self._abort_waiters: deque[tuple[int, asyncio.Future]] = deque()
        self._calls: dict[int, asyncio.Future] = {}
        self._bye: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = self._closed = False
        try:
            info = self._wait_ready()
        except BaseException:
            self._finalizer()
            raise
        self._facts, self._stats = info["facts"], info["stats"]
        self.model_name = model_name or info["source"]

    @classmethod
    def from_model(cls, model: str = "smollm2-135m", *, max_model_len: int | None = None,
                   kv_memory: str | int | None = None, device: str = "auto", warmup: bool = False,
                   **engine_kwargs) -> "ProcessEngine":
        """AsyncEngine.from_model's arguments; the model loads in the engine process."""
        kwargs = dict(model=model, device=device, max_model_len=max_model_len, kv_memory=kv_memory, **engine_kwargs)
        return cls(build_llm_engine, kwargs, model_name=model, warmup=warmup)

    def _wait_ready(self) -> dict:
        while True:
            if self._out.poll(0.2):
                try:
                    msg = self._out.recv()
                except EOFError:
                    msg = None
                if msg is not None and msg[0] == "ready":
                    return msg[1]
                if msg is not None and msg[0] == "error":
                    raise _child_error(msg)
            elif self._proc.is_alive():
                continue
            self._proc.join(5)
            raise RuntimeError(f"the engine process exited with code {self._proc.exitcode} before it was ready "
                               "(see its output above)")

    # -- what the server reads ---------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self._facts.tokenizer

    @property
    def max_model_len(self) -> int:
        return self._facts.max_model_len

    @property
    def num_tokens_capacity(self) -> int:
        """Tokens the whole KV pool holds (the server caps a chat request without max_tokens by it)."""
        return self._facts.kv.num_tokens_capacity

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def is_running(self) -> bool:
        return self._reading and not self.errored

    @property
    def errored(self) -> bool:
        return self._error is not None or (not self._closed and self._proc.exitcode is not None)

    @property
    def dead_error(self) -> EngineDeadError | None:
        if self._dead is None and self.errored:
            return EngineDeadError(self._death_text())
        return self._dead

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """LLMEngine.validate (PromptTooLongError, ValueError, TypeError), run here before anything is sent."""
        self._facts.validate(prompt_token_ids, params)

    def stats(self) -> dict:
        """The engine's stats as of its last message (sent every step), with requests sent but not applied yet
        counted as waiting."""
        s = dict(self._stats)
        s["num_waiting"] = s.get("num_waiting", 0) + len(self._adds)
        return s

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Read the engine's messages on the running event loop (one loop at a time; another after it closed)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop or self._closed or self.errored:
            return
        if self._loop is not None and not self._loop.is_closed():
            raise RuntimeError("this ProcessEngine already serves another event loop that is still open")
        self._queues.clear()  # left from a closed loop: nobody can wait on them any more
        self._abort_waiters.clear()
        self._calls.clear()
        self._loop, self._reading = loop, True
        loop.add_reader(self._out.fileno(), self._on_readable)
        self._on_readable()

    async def shutdown(self) -> None:
        """Stop the engine process after its current step; every unfinished request ends with finish_reason "abort"."""
        if self._closed:
            return
        if not self.errored:
            await self.start()
            self._bye = asyncio.get_running_loop().create_future()
            if self._send(("shutdown",)) is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(self._bye), SHUTDOWN_TIMEOUT_S)
                except asyncio.TimeoutError:
                    log.warning("the engine process did not stop within %.0f s: killing it", SHUTDOWN_TIMEOUT_S)
        self._closed = True
        self._detach()
        for rid, q in list(self._queues.items()):  # only if the child never answered: end them as it would have
            q.put(RequestOutput(rid, q.prompt, [], list(q.out_ids), "", q.text, True, "abort"))
        self._queues.clear()
        await asyncio.to_thread(self._proc.join, SHUTDOWN_TIMEOUT_S)
        self._finalizer()

    def close(self) -> None:
        """Stop the engine process without an event loop (e.g. a fixture's teardown after its loop has ended)."""
        if not self._closed and not self.errored:
            self._send(("shutdown",))
        self._closed = True
        self._proc.join(SHUTDOWN_TIMEOUT_S)
        self._finalizer()

    # -- requests ----------------------------------------------------------------------------------------------------
    def _check_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if self._closed:
            raise EngineDeadError("this engine was shut down: build a new one")
        if request_id in self._queues:
            raise ValueError(f"request id {request_id!r} is already in use")
        self.validate(list(prompt_token_ids), params)

    def _open_stream(self, request_id: str, prompt_token_ids: list[int]) -> _RemoteStream:
        return _RemoteStream(list(prompt_token_ids))

    def _submit(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        seq = self._send(("add", request_id, list(prompt_token_ids), params))
        if seq is not None:
            self._adds.append(seq)

    def _abort_nowait(self, request_id: str) -> None:
        self._queues.pop(request_id, None)
        if not self._closed and not self.errored:
            self._send(("abort", request_id))

    async def abort(self, request_id: str) -> None:
        """Abort a request; returns once the engine process has applied it (its blocks are free; its generator then
        ends with finish_reason "abort")."""
        await self.start()
        if self._closed or self.errored:
            return  # nothing runs there any more
        seq = self._send(("abort", request_id))
        if seq is not None:
            fut = asyncio.get_running_loop().create_future()
            self._abort_waiters.append((seq, fut))
            await fut

    async def call(self, fn, *args):
        """fn(engine, *args) in the engine process, between steps; returns its result (fn, args and the result must
        pickle: fn a module-level function). For benchmarks and tests, e.g. reading counters there."""
        await self.start()
        seq = None if self._closed or self.errored else self._send(("call", fn, args))
        if seq is None:
            raise EngineDeadError(self._dead_message) from self._error
        fut = asyncio.get_running_loop().create_future()
        self._calls[seq] = fut
        return await fut

    def _send(self, cmd: tuple) -> int | None:
        """Write one command (event loop thread only); its number, or None if the child is gone."""
        try:
            self._cmd.send(cmd)
        except (OSError, ValueError):  # a broken pipe: the child died
            self._died(None)
            return None
        self._num_sent += 1
        return self._num_sent

    # -- the child's messages ----------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            while self._reading and self._out.poll():
                self._handle(self._out.recv())
        except (EOFError, OSError):
            self._died(None)

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind in ("out", "bye"):
            _, applied, packed, errors, self._stats = msg
            while self._adds and self._adds[0] <= applied:
                self._adds.popleft()
            if packed:
                self._deliver_increments(packed)
            if errors:
                self._deliver([(rid, _rebuild(t, text)) for rid, t, text in errors])
            while self._abort_waiters and self._abort_waiters[0][0] <= applied:
                fut = self._abort_waiters.popleft()[1]
                if not fut.done():
                    fut.set_result(None)
            if kind == "bye":
                self._closed = True
                self._detach()
                if self._bye is not None and not self._bye.done():
                    self._bye.set_result(None)
        elif kind == "result":
            _, seq, ok, value = msg
            fut = self._calls.pop(seq, None)
            if fut is not None and not fut.done():
                fut.set_result(value) if ok else fut.set_exception(RuntimeError(f"in the engine process: {value}"))
        elif kind == "error":
            self._died(msg)

    def _deliver_increments(self, packed: list[tuple]) -> None:
        """engine_core.pack's tuples -> RequestOutputs into their mailboxes, adding the increments to each stream's
        running totals: StreamFrontEnd._deliver's rule in the same pass (this runs per stream per step)."""
        queues = self._queues
        for rid, new, delta, reason, stop_reason, first_time, num_preemptions, new_lps, prompt_lps in packed:
            s = queues.get(rid)
            if s is None:  # its consumer left (an abort is on its way) or it never was ours
                continue
            out_ids = s.out_ids
            out_ids += new  # only ever appended to: the outputs share it (outputs.py, "shared totals")
            if delta:
                s.text += delta
            finished = reason is not None
            lps = None
            if new_lps is not None:  # (asked for logprobs: the rare path, a copy per output is fine)
                s.logprobs = lps = (s.logprobs or []) + new_lps
            if prompt_lps is not None:
                s.prompt_logprobs = prompt_lps
            s.put(RequestOutput.sharing(rid, s.prompt, new, out_ids, len(out_ids), delta, s.text, finished, reason,
                                        stop_reason, 0.0, first_time, num_preemptions, new_lps, lps,
                                        s.prompt_logprobs))
            if finished:
                del queues[rid]

    def _detach(self) -> None:
        if self._reading and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._out.fileno())
        self._reading = False

    def _death_text(self, msg: tuple | None = None) -> str:
        if msg is not None:
            return f"the engine process failed: {msg[2]}: {msg[3]}"
        code = self._proc.exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0 else \
            f"exited with code {code}"
        return f"the engine process (pid {self._proc.pid}) {how}"

    def _died(self, msg: tuple | None) -> None:
        """The child is gone (its error message, or EOF / a broken pipe): fail everything that waits on it."""
        if self._error is not None or self._closed:
            return
        self._detach()
        if msg is None:
            self._proc.join(1)  # EOF comes as it exits: its exit code is there in a moment
        text = self._death_text(msg)
        cause = _child_error(msg) if msg is not None else RuntimeError(text)
        log.error("%s", text if msg is None else f"{text}\n{msg[4]}")
        dead = EngineDeadError(text)
        dead.__cause__ = cause
        self._fail(cause, dead)
        self._adds.clear()
        for _, fut in self._abort_waiters:
            if not fut.done():
                fut.set_result(None)
        self._abort_waiters.clear()
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(dead)
        self._calls.clear()
        if self._bye is not None and not self._bye.done():
            self._bye.set_result(None)

    def __repr__(self) -> str:
        state = "dead" if self.errored else "closed" if self._closed else "running" if self._reading else "idle"
        return f"ProcessEngine({self.model_name}, pid={self._proc.pid}, {state}, {self._facts})"
