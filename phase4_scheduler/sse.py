"""Server-sent events that abort their request when the client goes away.

    return EventStream(events())        # events(): an async generator of b"data: {...}\\n\\n" chunks

NOTE: a streamed request holds KV-cache blocks until it finishes, so a client that hangs up must free them at
once, not when the model would have stopped. Starlette's StreamingResponse listens for `http.disconnect` only
on servers that speak ASGI < 2.4 (uvicorn says 2.3); on 2.4 servers it notices a hang-up only when a write fails,
which never happens while the request waits in the queue, and a server may also drop writes to a closed socket
silently (uvicorn does), so the request would run to max_tokens with nobody reading. Either way it leaves
closing the generator to the garbage collector. This response listens for `http.disconnect` the whole time,
whatever the server, and always closes the event generator, shielded from cancellation, so that the generator's
`finally` (which calls `engine.abort`) runs exactly once, right away. tests/test_server_fake.py checks both
ASGI versions.
"""
from __future__ import annotations

import json
from json.encoder import encode_basestring

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


def sse(payload: dict | str) -> bytes:
    """One event: `data: <json>` and a blank line (`data: [DONE]` for the terminator)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {data}\n\n".encode()


DONE = sse("[DONE]")
_MARK = "\u2063TITAN-TEXT\u2063"  # a placeholder no JSON escaping changes (an invisible separator around a name)


class ChunkTemplate:
    """The event of a text chunk, rendered once per stream with a placeholder and split around it: per token only
    the text is JSON-escaped and glued in, instead of building and dumping a dict.

        t = ChunkTemplate(lambda text: P.completion_chunk(rid, model, created, text, None) | {"usage": None})
        t(" word") == sse(P.completion_chunk(rid, model, created, " word", None) | {"usage": None})

    `make(text)` must build the payload dict with `text` in exactly one place; the output is byte-identical to
    `sse(make(text))` (same separators, ensure_ascii=False)."""

    def __init__(self, make) -> None:
        rendered = sse(make(_MARK)).decode()
        quoted = encode_basestring(_MARK)
        if rendered.count(quoted) != 1:
            raise ValueError("ChunkTemplate: the payload must contain the text exactly once")
        self.prefix, self.suffix = rendered.split(quoted)

    def text(self, text: str) -> str:
        """The event as str (join several and .encode() once)."""
        return self.prefix + encode_basestring(text) + self.suffix

    def __call__(self, text: str) -> bytes:
        return self.text(text).encode()

    def __repr__(self) -> str:
        return f"ChunkTemplate({self.prefix[:40]!r}...)"


class EventStream(StreamingResponse):
    """A text/event-stream response over an async generator of encoded events."""

    def __init__(self, events) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async with anyio.create_task_group() as tg:

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()  # interrupts the loop below wherever it waits

            tg.start_soon(watch_disconnect)
            try:
                async for chunk in self.body_iterator:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:  # the connection broke while we wrote (ASGI 2.4 servers raise it)
                pass
            finally:
                with anyio.CancelScope(shield=True):
                    await self.body_iterator.aclose()
                tg.cancel_scope.cancel()
