"""The OpenAI-compatible HTTP server: FastAPI over the AsyncEngine.

    app = create_app(AsyncEngine.from_model("smollm2-135m"), api_key=None)
    uvicorn.run(app, host="127.0.0.1", port=8000)      # or: titan serve --model smollm2-135m

Endpoints: POST /v1/completions, POST /v1/chat/completions (both stream by SSE with `"stream": true`),
GET /v1/models, GET /health, GET /metrics (Prometheus text).

NOTE: the server never decides *when* a request runs: it turns HTTP into (prompt ids, SamplingParams) and hands
them to the engine, whose scheduler queues what does not fit. So overload means waiting, not 5xx. What the server
owns is the edge: validation (every refusal is a 4xx with OpenAI's error JSON, decided before a byte of a stream
is sent), the SSE framing, metrics, and aborting a request whose client left (see sse.py) so its KV blocks return.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from contextlib import aclosing, asynccontextmanager

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import PromptTooLongError
from common.sampling import SamplingParams, check_prompt_fits
from phase4_scheduler import protocol as P
from phase4_scheduler.metrics import CONTENT_TYPE, RequestMetrics, ServerMetrics
from phase4_scheduler.sse import DONE, ChunkTemplate, EventStream, sse

log = logging.getLogger("titan.server")


class Server:
    """Request handling shared by both endpoints; one per app."""

    def __init__(self, engine, api_key: str | None = None, model_name: str | None = None):
        self.engine, self.api_key = engine, api_key or None  # "" (an unset env var) means no key
        self.model_name = model_name or engine.model_name
        self.metrics = ServerMetrics()
        # a token's own text, special tokens shown (logprobs responses; cached: the same ids recur)
        self.token_str = functools.lru_cache(maxsize=1 << 16)(
            lambda t: self.engine.tokenizer.decode([t], skip_special_tokens=False))
        self.token_bytes = functools.lru_cache(maxsize=1 << 16)(self._token_bytes)  # chat logprobs' `bytes`

    def _token_bytes(self, t: int) -> bytes:
        """The bytes a token stands for (Tokenizer.token_bytes; a tokenizer without it: its text's UTF-8). Looked up
        per call, not at construction: an engine may load its tokenizer after the server is built."""
        own = getattr(self.engine.tokenizer, "token_bytes", None)
        return own(t) if own is not None else self.token_str(t).encode("utf-8")

    # ---- checks ------------------------------------------------------------------------------------------------
    def check_auth(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise P.OpenAIError("Incorrect or missing API key: send `Authorization: Bearer <key>` with the key the "
                                "server was started with (--api-key).", 401, code="invalid_api_key")

    def check_engine(self) -> None:
        """A dead engine (its step loop failed, or its process died) refuses with 503 before a response starts."""
        if getattr(self.engine, "errored", False):
            raise P.OpenAIError(f"the engine is not running ({self.engine.dead_error}): restart the server", 503,
                                type="server_error", code="engine_dead")

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise P.OpenAIError(f"The model `{name}` does not exist. This server serves `{self.model_name}` "
                                "(see GET /v1/models).", 404, param="model", code="model_not_found")

    def sampling_params(self, req: P._SamplingFields, n_prompt: int, max_tokens: int | None,
                        param: str) -> SamplingParams:
        """SamplingParams for a request, after checking that prompt + max_tokens fit the context window."""
        capacity = self.token_capacity()
        if max_tokens is None:  # chat without a limit: the rest of what one request can hold
            max_tokens = max(1, capacity - n_prompt)
        try:
            check_prompt_fits(n_prompt, max_tokens, self.engine.max_model_len)
        except PromptTooLongError as e:
            raise P.OpenAIError(str(e), 400, param=param, code="context_length_exceeded") from None
        if n_prompt >= capacity:  # a KV pool smaller than the context: the prompt alone fills it, whatever max_tokens
            raise P.OpenAIError(
                f"the prompt has {n_prompt} tokens but this server's KV cache holds at most {capacity} tokens per "
                f"request (the context is {self.engine.max_model_len}): shorten the prompt, or start the server "
                "with more --kv-memory.", 400, param=param, code="context_length_exceeded")
        stop_ids = list(req.stop_token_ids)
        if not req.ignore_eos:
            stop_ids += [t for t in self.engine.tokenizer.stop_token_ids() if t not in stop_ids]
        try:
            return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_k=req.top_k,
                                  top_p=req.top_p, seed=req.seed, stop_token_ids=stop_ids, stop=list(req.stop or []),
                                  ignore_eos=req.ignore_eos, logprobs=req.logprobs_k(),
                                  prompt_logprobs=req.prompt_logprobs_k(),
                                  presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                                  repetition_penalty=req.repetition_penalty, logit_bias=req.logit_bias)
        except ValueError as e:
            raise P.OpenAIError(str(e), 400, param=P.param_named(str(e), req)) from None

    def token_capacity(self) -> int:
        """Tokens one request can hold: the context window, or the whole KV pool where that is smaller (a small
        --kv-memory on CPU), so that a chat request without max_tokens is never refused for a limit it did not set."""
        cap = getattr(self.engine, "num_tokens_capacity", None)  # ProcessEngine; AsyncEngine: its LLMEngine's pool
        if cap is None:
            cap = getattr(getattr(getattr(self.engine, "engine", None), "kv", None), "num_tokens_capacity", None)
        return min(self.engine.max_model_len, cap) if isinstance(cap, int) else self.engine.max_model_len

    def validate(self, prompt_ids: list[int], params: SamplingParams, param: str) -> None:
        """The engine's own admission checks (e.g. prompt + max_tokens larger than the whole KV pool), run before
        the response starts so that a refusal is a 400 rather than an error event inside a 200 stream."""
        check = getattr(self.engine, "validate", None) or getattr(getattr(self.engine, "engine", None), "validate",
                                                                     None)
        if check is None:
            return
        try:
            check(prompt_ids, params)
        except PromptTooLongError as e:
            raise P.OpenAIError(str(e), 400, param=param, code="context_length_exceeded") from None
        except (ValueError, TypeError) as e:  # the engine's messages start with the field they are about
            raise P.OpenAIError(str(e), 400, param=P.param_named(str(e), params) or param) from None

    def prompt_ids(self, prompt) -> list[int]:
        tok = self.engine.tokenizer
        if isinstance(prompt, str):
            return tok.encode(prompt, add_special_tokens=True)
        bad = [t for t in prompt if not 0 <= t < tok.vocab_size]
        if bad:
            raise P.OpenAIError(f"token ids {bad[:5]} are outside the vocabulary [0, {tok.vocab_size})", 400,
                                param="prompt")
        return list(prompt)

    # ---- generation --------------------------------------------------------------------------------------------
    def _batches(self, prompt_ids: list[int], params: SamplingParams, rid: str):
        """The engine's outputs in lists (AsyncEngine.generate_batches; an engine with only `generate` gets lists
        of one)."""
        batches = getattr(self.engine, "generate_batches", None)
        if batches is not None:
            return batches(prompt_ids, params, rid)

        async def single():
            async with aclosing(self.engine.generate(prompt_ids, params, rid)) as outs:
                async for out in outs:
                    yield [out]
        return single()

    async def generate(self, prompt_ids: list[int], params: SamplingParams, rid: str):
        """The engine's outputs in lists, with latency metrics; if the consumer stops early, the request is aborted."""
        track = RequestMetrics(self.metrics, len(prompt_ids))
        outputs = self._batches(prompt_ids, params, rid)
        try:
            async for batch in outputs:
                track.batch(batch)
                yield batch
        except Exception:
            track.failed = True
            raise
        finally:
            with anyio.CancelScope(shield=True):  # runs to the end even when the client's task is cancelled
                await self._release(rid, track, outputs)

    async def _release(self, rid: str, track: RequestMetrics, outputs) -> None:
        """After a request's consumer is done: abort it in the engine if it is still there, close its outputs."""
        if not track.finished and not track.failed:  # (a failed request is no longer in the engine)
            self.metrics.requests.inc(label_value="abort")
            try:
                await self.engine.abort(rid)
            except Exception:  # noqa: BLE001 - an abort must never mask the original error
                log.exception("abort of %s failed", rid)
        await outputs.aclose()

    async def collect(self, request: Request, gen):
        """Run a non-streamed request to its end; abort it if the client disconnects meanwhile."""
        final = None

        async def consume():
            nonlocal final
            async with aclosing(gen):
                async for batch in gen:
                    final = batch[-1]

        task = asyncio.ensure_future(consume())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.5)
                if not task.done() and await request.is_disconnected():
                    task.cancel()  # consume() closes the generator, whose finally aborts the request
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    return None
            task.result()  # re-raises what the engine raised
            return final
        finally:
            if not task.done():
                task.cancel()

    async def stream(self, prompt_ids: list[int], params: SamplingParams, rid: str, model: str, chat: bool,
                     include_usage: bool, echo: str | None = None):
        """The SSE events of one streamed request, in OpenAI's chunk format: one write per list of outputs.

        NOTE (cost): this is the per-stream, per-step code of the server, so it reads the engine's output lists
        itself (what `generate` does, without another generator layer in between), and the common event (a text
        delta, no finish reason) comes from a ChunkTemplate rendered once per request; the rare ones (first chat
        chunk, finish, usage, errors) are built as dicts. Same bytes either way. A consumer that stops early
        (client disconnect: EventStream closes this generator) aborts the request, as `generate` does.
        `echo` (completions): the prompt's text, sent first with the first output (and its logprobs when asked)."""
        created, n_out, n_prompt = int(time.time()), 0, len(prompt_ids)
        extra = {"usage": None} if include_usage else {}
        want_lp, offset = params.logprobs is not None, 0

        def chunk(text: str, finish_reason: str | None, first: bool = False, lps: list | None = None) -> bytes:
            nonlocal offset
            lp, offset = P.logprobs_object(lps, chat, self.token_str, offset, self.token_bytes)  # a dict per chunk
            return sse({**P.stream_chunk(rid, model, created, chat, text, finish_reason, lp, first), **extra})

        if chat:
            text_event = ChunkTemplate(lambda t: {**P.chat_chunk(rid, model, created, {"content": t}, None), **extra})
        else:
            text_event = ChunkTemplate(lambda t: {**P.completion_chunk(rid, model, created, t, None), **extra})
        track = RequestMetrics(self.metrics, n_prompt)
        outputs = self._batches(prompt_ids, params, rid)
        try:
            if chat:
                yield chunk("", None, first=True)
            while True:
                try:
                    batch = await outputs.__anext__()
                except StopAsyncIteration:
                    break
                except Exception:
                    track.failed = True
                    raise
                track.batch(batch)
                parts: list[str] = []
                if echo is not None:  # the first output carries the prompt's logprobs (when asked)
                    parts.append(chunk(echo, None, lps=batch[0].prompt_logprobs).decode())
                    echo = None
                for out in batch:
                    if want_lp:
                        if out.new_logprobs or out.text_delta:
                            parts.append(chunk(out.text_delta, None if chat else out.finish_reason,
                                               lps=out.new_logprobs).decode())
                        if out.finished and (chat or not (out.new_logprobs or out.text_delta)):
                            parts.append(chunk("", out.finish_reason).decode())
                        continue
                    if out.finished:
                        if not chat:
                            parts.append(chunk(out.text_delta, out.finish_reason).decode())
                            continue
                        if out.text_delta:
                            parts.append(text_event.text(out.text_delta))
                        parts.append(chunk("", out.finish_reason).decode())
                    elif out.text_delta:
                        parts.append(text_event.text(out.text_delta))
                n_out = batch[-1].num_output_tokens  # (a count: no copy of a shared token list)
                if parts:
                    yield "".join(parts).encode()
            if include_usage:
                obj = "chat.completion.chunk" if chat else "text_completion"
                yield sse(P.usage_chunk(rid, model, created, obj, n_prompt, n_out))
        except PromptTooLongError as e:
            yield sse(P.error_body(str(e), code="context_length_exceeded"))
        except Exception as e:  # noqa: BLE001 - the status line is sent: report in-band, as OpenAI does
            log.exception("stream %s failed", rid)
            yield sse(P.error_body(f"internal error: {e}", type="server_error"))
        finally:
            with anyio.CancelScope(shield=True):
                await self._release(rid, track, outputs)
        yield DONE

    async def respond(self, request: Request, req, prompts: list, prompt_ids_list: list[list[int]], chat: bool):
        """One request's response: `prompts` as sent (a batch for completions) and their token ids."""
        self.check_engine()
        max_tokens = (req.max_completion_tokens or req.max_tokens) if chat else req.max_tokens
        param = "messages" if chat else "prompt"
        params_list = []
        for prompt_ids in prompt_ids_list:  # every prompt is checked before anything runs
            params_list.append(self.sampling_params(req, len(prompt_ids), max_tokens, param))
            self.validate(prompt_ids, params_list[-1], param)
        rid = P.new_id("chatcmpl" if chat else "cmpl")
        echoes = [self.echo_text(req, p, ids) for p, ids in zip(prompts, prompt_ids_list)]
        if req.n > 1 or len(prompt_ids_list) > 1:  # several choices: an engine request each (choices.py)
            return await self.respond_choices(request, req, prompt_ids_list, params_list, echoes, rid, chat)
        prompt_ids, params, echo = prompt_ids_list[0], params_list[0], echoes[0]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventStream(self.stream(prompt_ids, params, rid, req.model, chat, include_usage, echo))
        gen = self.generate(prompt_ids, params, rid)
        try:
            out = await self.collect(request, gen)
        except PromptTooLongError as e:
            raise P.OpenAIError(str(e), 400, param="prompt", code="context_length_exceeded") from None
        if out is None:  # the client left; nobody reads this
            return JSONResponse(P.error_body("client disconnected"), status_code=499)
        make = P.chat_response if chat else P.completion_response
        text, entries = P.echoed(out, echo)
        return make(rid, req.model, text, out.finish_reason, len(prompt_ids), len(out.output_token_ids),
                    logprobs=P.logprobs_object(entries, chat, self.token_str, token_bytes=self.token_bytes)[0])

    def echo_text(self, req, prompt, prompt_ids: list[int]) -> str | None:
        """Completions with echo: the prompt as text (as sent, or its token ids decoded); else None."""
        if not getattr(req, "echo", False):
            return None
        if isinstance(prompt, str):
            return prompt
        return self.engine.tokenizer.decode(prompt_ids, skip_special_tokens=False)


    async def respond_choices(self, request: Request, req, prompt_ids_list: list[list[int]],
                              params_list: list[SamplingParams], echoes: list, rid: str, chat: bool):
        """n choices of each prompt, choice index = prompt index x n + j (OpenAI's order)."""
        from phase4_scheduler.choices import choice_params, collect_choices, stream_choices
        choices = [(ids, p, echo) for ids, params, echo in zip(prompt_ids_list, params_list, echoes)
                   for p in choice_params(params, req.n)]
        n_prompt = sum(len(ids) for ids in prompt_ids_list)  # usage: each prompt once
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventStream(stream_choices(self, choices, n_prompt, rid, req.model, chat, include_usage))
        try:
            body = await collect_choices(self, request, choices, n_prompt, rid, req.model, chat)
        except PromptTooLongError as e:
            raise P.OpenAIError(str(e), 400, param="prompt", code="context_length_exceeded") from None
        if body is None:  # the client left; nobody reads this
            return JSONResponse(P.error_body("client disconnected"), status_code=499)
        return body


def create_app(engine, api_key: str | None = None, manage_engine: bool = True,
               served_model_name: str | None = None) -> FastAPI:
    """The FastAPI app over an engine; with manage_engine the app's lifespan starts and shuts the engine down.
    Clients name the model `served_model_name` (default: engine.model_name, the --model string)."""
    server = Server(engine, api_key, served_model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage_engine:
            await engine.start()
        try:
            yield
        finally:
            if manage_engine:
                await engine.shutdown()

    app = FastAPI(title="TitanInfer", summary="OpenAI-compatible LLM server", lifespan=lifespan)
    app.state.server = server
    auth = [Depends(server.check_auth)]

    def error(status: int, body: dict) -> JSONResponse:
        server.metrics.errors.inc(label_value=str(status))
        return JSONResponse(body, status_code=status)

    @app.exception_handler(P.OpenAIError)
    async def _openai_error(request: Request, exc: P.OpenAIError):
        return error(exc.status, exc.body())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # FastAPI parses the JSON before it runs the auth dependency: the key is checked first all the same, so a
        # client without it gets a 401 whatever it sent (every route that validates a body is a keyed /v1 route)
        try:
            server.check_auth(request)
        except P.OpenAIError as e:
            return error(e.status, e.body())
        msg, param = P.validation_message(exc.errors())
        return error(400, P.error_body(msg, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error(exc.status_code, P.error_body(f"{exc.detail}: {request.method} {request.url.path}", code=code))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error(500, P.error_body(f"internal error: {type(exc).__name__}: {exc}", type="server_error"))

    @app.post("/v1/completions", dependencies=auth)
    async def completions(req: P.CompletionRequest, request: Request):
        server.check_model(req.model)
        prompts = req.prompts()
        return await server.respond(request, req, prompts, [server.prompt_ids(p) for p in prompts], chat=False)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(req: P.ChatCompletionRequest, request: Request):
        server.check_model(req.model)
        return await server.respond(request, req, [None], [engine.tokenizer.chat_ids(req.chat())], chat=True)

    def model_card() -> dict:
        return {"id": server.model_name, "object": "model", "created": int(time.time()), "owned_by": "titaninfer",
                "max_model_len": engine.max_model_len}

    @app.get("/v1/models", dependencies=auth)
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}", dependencies=auth)
    async def model(name: str):
        server.check_model(name)
        return model_card()

    @app.get("/health")
    async def health():
        if getattr(engine, "errored", False):  # the engine died: a load balancer should stop sending here
            return JSONResponse({"status": "unhealthy", "model": server.model_name, "error": str(engine.dead_error)},
                                status_code=503)
        stats = engine.stats()
        return {"status": "ok", "model": server.model_name, "num_running": stats.get("num_running", 0),
                "num_waiting": stats.get("num_waiting", 0)}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(server.metrics.render(engine.stats(), server.model_name), media_type=CONTENT_TYPE)

    return app

