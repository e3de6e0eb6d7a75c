"""bench_stream_host: both sides measure something positive on a few streams, and the front path really delivers
(every consumer ends with [DONE])."""
import pytest

from phase4_scheduler import bench_stream_host as B


def test_engine_and_front_measure(tokenizer):
    for inc in (False, True):
        assert 0 < B.engine_us(4, 8, inc, steps=3, tokenizer=tokenizer) < 1e5
    assert 0 < B.front_us(4, 50, steps=10) < 1e5


def test_front_consumers_get_every_event(monkeypatch):
    from phase4_scheduler import sse

    bodies = []
    orig = sse.EventStream.__call__

    async def spy(self, scope, receive, send):
        async def keep(msg):
            bodies.append(msg.get("body", b""))
            await send(msg)
        await orig(self, scope, receive, keep)
    monkeypatch.setattr(sse.EventStream, "__call__", spy)
    B.front_us(3, 0, steps=8)
    assert sum(b.endswith(b"data: [DONE]\n\n") for b in bodies) == 3
    assert sum(b' the' in b or b' quick' in b for b in bodies) >= 3 * 2
