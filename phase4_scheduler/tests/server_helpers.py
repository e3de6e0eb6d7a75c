"""Helpers shared by the server tests: polling, a Prometheus text parser, and the concurrent-streams driver."""
from __future__ import annotations

import asyncio
import time

import openai


def wait_until(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def parse_metrics(text: str) -> dict[str, float]:
    """`name{labels}` -> value; also checks that every sample line has a TYPE-declared family."""
    samples, types = {}, {}
    for line in text.strip().splitlines():
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split()
            types[name] = kind
        elif not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            family = key.split("{")[0]
            assert any(family == n or family.startswith(n + "_") for n in types), line
            samples[key] = float(value)
    return samples


async def _stream_one(client: openai.AsyncOpenAI, model: str, i: int, max_tokens: int, abort_after: int | None):
    stream = await client.completions.create(model=model, prompt=f"request {i}", max_tokens=max_tokens, stream=True,
                                             stream_options={"include_usage": True}, temperature=0,
                                             extra_body={"ignore_eos": True})
    n_chunks, usage, reason = 0, None, None
    async for chunk in stream:
        if chunk.choices:
            n_chunks += 1
            reason = chunk.choices[0].finish_reason or reason
        if chunk.usage:
            usage = chunk.usage
        if abort_after is not None and n_chunks >= abort_after:
            await stream.close()
            return None
    return usage, reason


async def run_concurrent(base_url: str, model: str, num: int = 100, max_tokens: int = 12, abort_every: int = 10,
                         abort_max_tokens: int = 200):
    """`num` concurrent streams, every `abort_every`-th closed by its client after 2 chunks (these ask for
    `abort_max_tokens`, so they cannot finish first however slowly the client reads); returns the others'
    (usage, finish_reason) and None for the closed ones."""
    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0, timeout=120) as client:
        return await asyncio.gather(*(
            _stream_one(client, model, i, abort_max_tokens, 2) if i % abort_every == 0
            else _stream_one(client, model, i, max_tokens, None) for i in range(num)))
