"""Several choices in one response: `n > 1`, and a batch of prompts (completions), each choice its own engine
request (ids `<rid>-0` .. `<rid>-<k-1>`; choice index = prompt index x n + j, OpenAI's order).

NOTE (what n costs here): each choice is its own request, so a prompt is prefilled n times (no prefix sharing
before phase 8's radix cache) and the requests compete for seats and KV blocks like any others. Choice j samples
with seed + j when a seed is given (the choices differ, reproducibly); unseeded choices draw from their own random
state; greedy choices are identical (as OpenAI's). usage counts each prompt once and every choice's completion
tokens. If the client leaves, every choice is aborted (each through Server.generate's release).
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


async def collect_choices(server, request, choices: list[tuple], n_prompt: int, rid: str, model: str, chat: bool):
    """choices: (prompt ids, SamplingParams, echo text or None) each. Every choice to its end (concurrently), then one
    response with all of them; None if the client left."""
    finals = await asyncio.gather(*(server.collect(request, server.generate(ids, p, f"{rid}-{i}"))
                                    for i, (ids, p, _) in enumerate(choices)))
    if any(f is None for f in finals):  # the client left: each collect aborted its own request
        return None
    make = P.chat_response if chat else P.completion_response
    created, bodies, n_out = int(time.time()), [], 0
    for i, (out, (_, _, echo)) in enumerate(zip(finals, choices)):
        text, entries = P.echoed(out, echo)
        body = make(rid, model, text, out.finish_reason, n_prompt, len(out.output_token_ids), created,
                    logprobs=P.logprobs_object(entries, chat, server.token_str, token_bytes=server.token_bytes)[0])
        bodies.append({**body["choices"][0], "index": i})
        n_out += len(out.output_token_ids)
    return {**body, "choices": bodies, "usage": P.usage(n_prompt, n_out)}


async def stream_choices(server, choices: list[tuple], n_prompt: int, rid: str, model: str, chat: bool,
                         include_usage: bool):
    """The SSE events of n choices interleaved as they come (each chunk names its choice's `index`), then usage
    (when asked) and [DONE]. A consumer that stops early cancels every choice's pump, whose generator aborts its
    request."""
    created, n = int(time.time()), len(choices)
    extra = {"usage": None} if include_usage else {}
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, ids: list[int], p: SamplingParams) -> None:
        try:
            async with aclosing(server.generate(ids, p, f"{rid}-{i}")) as gen:
                async for batch in gen:
                    queue.put_nowait((i, batch, None))
            queue.put_nowait((i, None, None))
        except Exception as e:  # noqa: BLE001 - handed to the stream, which reports it in-band
            queue.put_nowait((i, None, e))

    def chunk(i: int, text: str, finish: str | None, lp=None, first: bool = False) -> str:
        return sse({**P.stream_chunk(rid, model, created, chat, text, finish, lp, first, i), **extra}).decode()

    tasks = [asyncio.ensure_future(pump(i, ids, p)) for i, (ids, p, _) in enumerate(choices)]
    n_out, offsets, live, echoes = [0] * n, [0] * n, n, [echo for *_, echo in choices]
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
            if echoes[i] is not None:  # the prompt first (completions with echo), its logprobs with the first output
                lp, offsets[i] = P.logprobs_object(batch[0].prompt_logprobs, chat, server.token_str, offsets[i],
                                                   server.token_bytes)
                parts.append(chunk(i, echoes[i], None, lp))
                echoes[i] = None
            for out in batch:
                lp, offsets[i] = P.logprobs_object(out.new_logprobs, chat, server.token_str, offsets[i],
                                                   server.token_bytes)
                if out.text_delta or lp:
                    parts.append(chunk(i, out.text_delta, None if chat else out.finish_reason, lp))
                if out.finished and (chat or not (out.text_delta or lp)):
                    parts.append(chunk(i, "", out.finish_reason))
            n_out[i] = batch[-1].num_output_tokens
            if parts:
                yield "".join(parts).encode()
        if include_usage:
            obj = "chat.completion.chunk" if chat else "text_completion"
            yield sse(P.usage_chunk(rid, model, created, obj, n_prompt, sum(n_out)))
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
