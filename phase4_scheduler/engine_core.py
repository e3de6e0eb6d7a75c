"""The engine core: an LLMEngine stepping in its own process (the child side of ProcessEngine, process_engine.py).

    parent (API server)                               child (this module)
    ProcessEngine ──("add" | "abort" | "call" | "shutdown")──► receiver thread ─► inbox ─► EngineCore.run
                  ◄──("out", applied, outputs, errors, stats) one per step ─────────────── engine.step(on_forward=…)

The child is started with multiprocessing's 'spawn' context (a fresh interpreter: safe with CUDA, nothing of the
parent's heap), builds its engine from picklable arguments (`build_llm_engine(**kwargs)`, what AsyncEngine.from_model
takes, or any module-level factory), optionally warms it up, and reports "ready" with what the front end needs
without a round trip: the tokenizer (the engine's own, loaded by common.model_loader), and the facts
LLMEngine.validate reads (EngineFacts), so requests are checked in the parent before they are sent.

NOTE (the loop): while there is work the inbox is drained without blocking, then one step runs; while idle it blocks
on the inbox. Commands apply in the order they were sent. Each step sends ONE message: the previous step's outputs
in a compact form (`pack`), the number of commands applied so far (the parent's acknowledgement of adds and
aborts: `abort()` returns once it is covered) and `engine.stats()` (so /metrics and /health need no round trip).
Which outputs go when is AsyncEngine's rule: step k's list (with the adds/aborts applied around it) is sent once
step k+1's forward is launched, from the `on_forward` hook, so pickling and the pipe write overlap the device;
when nothing follows, at once.

NOTE (the receiver thread): the parent writes commands from its event loop; if this process read them only between
steps, a burst of large prompts could fill the pipe and block the parent's loop mid-step. The thread reads raw bytes
as they come (it needs the GIL only briefly); the step loop unpickles them.

NOTE (failure): an exception in the child is sent as a last message (the exception if it pickles, its type and
text, the traceback) and the child exits with code 1; the parent turns it into EngineDeadError for every open stream.
SIGINT is ignored here (Ctrl-C on `titan serve` reaches the whole process group): the parent's shutdown message,
or the pipe's EOF when the parent is gone, ends this process.
"""
from __future__ import annotations

import inspect
import pickle
import queue
import signal
import sys
import threading
import traceback
from types import SimpleNamespace

from phase4_scheduler.memory import freeze_heap


def build_llm_engine(model: str = "smollm2-135m", **kwargs):
    """The default factory: LLMEngine.from_model(model, **kwargs) (device, max_model_len, kv_memory, ...)."""
    from phase4_scheduler.engine import LLMEngine

    return LLMEngine.from_model(model, **kwargs)


class EngineFacts:
    """What LLMEngine.validate reads of an engine, taken in the child and sent to the parent, where `validate` runs
    the engine's own method on them: one set of checks, the same errors, before anything crosses the pipe."""

    def __init__(self, engine) -> None:
        self.config = SimpleNamespace(vocab_size=engine.config.vocab_size)
        self.max_model_len = engine.max_model_len
        self.kv = SimpleNamespace(num_tokens_capacity=engine.kv.num_tokens_capacity)
        self.detokenize = engine.detokenize
        self.tokenizer = engine.tokenizer
        self._validate = type(engine).validate

    def validate(self, prompt_token_ids: list[int], params) -> None:
        self._validate(self, prompt_token_ids, params)

    def __repr__(self) -> str:
        return (f"EngineFacts(vocab={self.config.vocab_size}, max_model_len={self.max_model_len}, "
                f"kv_tokens={self.kv.num_tokens_capacity}, detokenize={self.detokenize})")


def pack(outputs: list) -> list[tuple]:
    """RequestOutputs -> (request_id, new_token_ids, text_delta, finish_reason, stop_reason, first_token_time,
    num_preemptions, new_logprobs, prompt_logprobs): the increments only; the parent keeps the running totals
    (process_engine.unpack). Tuples (what `LLMEngine.step(increments=True)` returns) pass as they are."""
    return [o if type(o) is tuple else (o.request_id, o.new_token_ids, o.text_delta, o.finish_reason, o.stop_reason,
                                        o.first_token_time, o.num_preemptions, o.new_logprobs,
                                        o.prompt_logprobs if o.prompt_logprobs is not None
                                        and o.num_output_tokens == len(o.new_token_ids) else None)
            for o in outputs]  # (prompt logprobs: with a request's first output only, as LLMEngine's increments)


def _error_message(exc: BaseException) -> tuple:
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)  # an exception whose __init__ takes other arguments pickles but does not unpickle
    except Exception:  # noqa: BLE001 - then the parent gets its type and text
        blob = None
    return ("error", blob, type(exc).__name__, str(exc), "".join(traceback.format_exception(exc)))


class EngineCore:
    """The step loop of the child process (see the module NOTEs)."""

    def __init__(self, engine, conn_in, conn_out) -> None:
        self.engine, self.conn = engine, conn_out
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.num_applied = 0  # commands applied so far (the parent counts the ones it sent)
        self.stopping = False
        self.parent_gone = False
        try:
            params = inspect.signature(engine.step).parameters
        except (TypeError, ValueError):
            params = {}
        self.step_has_hook = "on_forward" in params
        # LLMEngine.step(increments=True): tuples, not RequestOutputs cut down by `pack` (engine.py's NOTE)
        self.step_kwargs = {"increments": True} if "increments" in params else {}
        threading.Thread(target=self._receive, args=(conn_in,), name="titan-core-inbox", daemon=True).start()

    def _receive(self, conn) -> None:
        try:
            while True:
                self.inbox.put(conn.recv_bytes())
        except (EOFError, OSError):  # the parent is gone (or closed its end): stop
            self.inbox.put(None)

    def _take(self, block: bool) -> list:
        msgs = [self.inbox.get()] if block else []
        while True:
            try:
                msgs.append(self.inbox.get_nowait())
            except queue.Empty:
                return msgs

    def _apply(self, raw: list, outs: list, errors: list) -> None:
        """Apply commands in order: adds, aborts (their final outputs join `outs`), calls (answered at once)."""
        eng = self.engine
        for blob in raw:
            if blob is None:
                self.stopping = self.parent_gone = True
                continue
            cmd = pickle.loads(blob)
            self.num_applied += 1
            kind = cmd[0]
            if kind == "add":
                try:  # the parent validated it against EngineFacts: only a race (e.g. a duplicate id) fails here
                    eng.add_request(cmd[1], cmd[2], cmd[3], validated=True)
                except Exception as e:  # noqa: BLE001 - the request's stream gets it, the engine goes on
                    errors.append((cmd[1], type(e).__name__, str(e)))
            elif kind == "abort":
                out = eng.abort_request(cmd[1])
                if out is not None:
                    outs.append(out)
            elif kind == "call":
                self._answer(self.num_applied, cmd[1], cmd[2])
            elif kind == "shutdown":
                self.stopping = True
            else:
                raise ValueError(f"engine core: unknown command {kind!r}")

    def _answer(self, seq: int, fn, args) -> None:
        try:
            self.conn.send(("result", seq, True, fn(self.engine, *args)))
        except Exception as e:  # noqa: BLE001 - the caller gets it
            self.conn.send(("result", seq, False, f"{type(e).__name__}: {e}"))

    def _send(self, kind: str, outs: list, errors: list) -> None:
        self.conn.send((kind, self.num_applied, pack(outs), errors, self.engine.stats()))

    def run(self) -> None:
        eng = self.engine
        ready: tuple[list, list] | None = None  # the last step's outputs and errors, not sent yet

        def on_forward() -> None:  # step k+1's forward is launched: step k's outputs go now
            nonlocal ready
            if ready is not None:
                sent, ready = ready, None
                self._send("out", *sent)

        while True:
            outs, errors = [], []
            self._apply(self._take(block=ready is None and not eng.has_unfinished()), outs, errors)
            if self.stopping:
                break
            if not eng.has_unfinished():  # idle: what is left goes now (also the acknowledgement of the commands)
                if ready is not None:
                    outs, errors, ready = ready[0] + outs, ready[1] + errors, None
                self._send("out", outs, errors)
                continue
            if self.step_has_hook:
                outs += eng.step(on_forward=on_forward, **self.step_kwargs)
            else:
                on_forward()
                outs += eng.step(**self.step_kwargs)
            on_forward()  # a step that returned without calling its hook
            self._apply(self._take(block=False), outs, errors)  # aborts that arrived meanwhile free blocks now
            ready = (outs, errors)  # (a shutdown applied just now ends the loop at the top, with these unsent)
        if ready is not None:  # shutdown: every unfinished request ends with finish_reason "abort"
            outs, errors = ready[0] + outs, ready[1] + errors
        outs += [o for rid in list(eng.requests) if (o := eng.abort_request(rid)) is not None]
        if not self.parent_gone:
            self._send("bye", outs, errors)


def run_engine_core(conn_in, conn_out, build, build_kwargs: dict, warmup: bool = False) -> None:
    """The child process's entry point: build the engine, report ready, run the loop; on any exception send it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine = build(**build_kwargs)
        if warmup:
            engine.warmup()  # kernels compile now, not inside the first client's TTFT
        freeze_heap()
        conn_out.send(("ready", {"facts": EngineFacts(engine), "stats": engine.stats(),
                                 "source": getattr(getattr(engine, "loaded", None), "source", None)}))
        EngineCore(engine, conn_in, conn_out).run()
    except BaseException as e:  # noqa: BLE001 - the parent must hear of it; then this process ends
        try:
            conn_out.send(_error_message(e))
        except Exception:  # noqa: BLE001 - the parent is gone too
            pass
        sys.exit(1)
