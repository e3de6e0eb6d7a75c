"""`n > 1`: several choices for one prompt, as n engine requests (ids `<rid>-0` .. `<rid>-<n-1>`).

NOTE (what n costs here): each choice is its own request, so the prompt is prefilled n times (no prefix sharing
before phase 8's radix cache) and n requests compete for seats and KV blocks like any others. Choice i samples with
seed + i when a seed is given (the choices differ, reproducibly); unseeded choices draw from their own random state;
greedy choices are identical (as OpenAI's). usage counts the prompt once and every choice's completion tokens.
If the client leaves, every choice is aborted (each through Server.generate's release).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from contextlib import aclosing

import anyio

from common.errors import PromptTooLongError
from common.sampling import SamplingParams
from phase4_scheduler import protocol as P
from phase4_scheduler.sse import DONE, sse


def choice_params(params: SamplingParams, n: int) -> list[SamplingParams]:
    """The n choices' sampling parameters: choice i with seed + i where a seed is set."""
    if params.seed is None:
        return [params] * n
    return [dataclasses.replace(params, seed=params.seed + i) for i in range(n)]


async def collect_choices(server, request, prompt_ids: list[int], params: list[SamplingParams], rid: str,
                          model: str, chat: bool, echo: str | None = None):
    """Every choice to its end (concurrently), then one response with n choices; None if the client left."""
    finals = await asyncio.gather(*(server.collect(request, server.generate(prompt_ids, p, f"{rid}-{i}"))
                                    for i, p in enumerate(params)))
    if any(f is None for f in finals):  # the client left: each collect aborted its own request
        return None
    make = P.chat_response if chat else P.completion_response
    created, choices, n_out = int(time.time()), [], 0
    for i, out in enumerate(finals):
        text, entries = P.echoed(out, echo)
        body = make(rid, model, text, out.finish_reason, len(prompt_ids), len(out.output_token_ids), created,
                    logprobs=P.logprobs_object(entries, chat, server.token_str)[0])
        choices.append({**body["choices"][0], "index": i})
        n_out += len(out.output_token_ids)
    return {**body, "choices": choices, "usage": P.usage(len(prompt_ids), n_out)}


async def stream_choices(server, prompt_ids: list[int], params: list[SamplingParams], rid: str, model: str,
                         chat: bool, include_usage: bool, echo: str | None = None):
    """The SSE events of n choices interleaved as they come (each chunk names its choice's `index`), then usage
    (when asked) and [DONE]. A consumer that stops early cancels every choice's pump, whose generator aborts its
    request."""
    created, n = int(time.time()), len(params)
    extra = {"usage": None} if include_usage else {}
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, p: SamplingParams) -> None:
        try:
            async with aclosing(server.generate(prompt_ids, p, f"{rid}-{i}")) as gen:
                async for batch in gen:
                    queue.put_nowait((i, batch, None))
            queue.put_nowait((i, None, None))
        except Exception as e:  # noqa: BLE001 - handed to the stream, which reports it in-band
            queue.put_nowait((i, None, e))

    def chunk(i: int, text: str, finish: str | None, lp=None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            body = P.chat_chunk(rid, model, created, delta, finish, lp)
        else:
            body = P.completion_chunk(rid, model, created, text, finish, lp)
        body["choices"][0]["index"] = i
        return sse({**body, **extra}).decode()

    tasks = [asyncio.ensure_future(pump(i, p)) for i, p in enumerate(params)]
    n_out, offsets, live, echoing = [0] * n, [0] * n, n, [echo is not None] * n
    try:
        if chat:
            yield "".join(chunk(i, "", None, first=True) for i in range(n)).encode()
        while live:
            i, batch, err = await queue.get()
            if err is not None:
                raise err
            if batch is None:
                live -= 1
                continue
            parts = []
            if echoing[i]:  # the prompt first (completions with echo), its logprobs with the first output
                lp, offsets[i] = P.logprobs_object(batch[0].prompt_logprobs, chat, server.token_str, offsets[i])
                parts.append(chunk(i, echo, None, lp))
                echoing[i] = False
            for out in batch:
                lp, offsets[i] = P.logprobs_object(out.new_logprobs, chat, server.token_str, offsets[i])
                if out.text_delta or lp:
                    parts.append(chunk(i, out.text_delta, None if chat else out.finish_reason, lp))
                if out.finished and (chat or not (out.text_delta or lp)):
                    parts.append(chunk(i, "", out.finish_reason))
            n_out[i] = batch[-1].num_output_tokens
            if parts:
                yield "".join(parts).encode()
        if include_usage:
            obj = "chat.completion.chunk" if chat else "text_completion"
            yield sse(P.usage_chunk(rid, model, created, obj, len(prompt_ids), sum(n_out)))
    except PromptTooLongError as e:
        yield sse(P.error_body(str(e), code="context_length_exceeded"))
    except Exception as e:  # noqa: BLE001 - the status line is sent: report in-band, as OpenAI does
        yield sse(P.error_body(f"internal error: {e}", type="server_error"))
    finally:
        with anyio.CancelScope(shield=True):  # every choice's generator closes (and aborts) before we return
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
    yield DONE
