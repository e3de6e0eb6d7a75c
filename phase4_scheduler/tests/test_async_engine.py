"""AsyncEngine: concurrent streams, aborts (explicit and by a consumer that leaves), errors before queueing, shutdown."""
import asyncio
import random

import pytest

from common.errors import PromptTooLongError
from common.sampling import SamplingParams
from phase4_scheduler.async_engine import AsyncEngine
from phase4_scheduler.engine import LLMEngine


def make(tiny, **kw):
    kw.setdefault("num_blocks", 40)
    kw.setdefault("block_size", 8)
    return AsyncEngine(LLMEngine(tiny, **kw), model_name="tiny")


async def consume(engine, rid, ids, max_tokens, leave_after=None):
    """Stream one request; with leave_after, stop reading after that many tokens (a client that disconnects)."""
    n, last = 0, None
    agen = engine.generate(ids, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True), rid)
    async for out in agen:
        assert out.request_id == rid and len(out.output_token_ids) == n + len(out.new_token_ids)
        n += len(out.new_token_ids)
        last = out
        if leave_after is not None and n >= leave_after:
            await agen.aclose()
            return rid, "left", n
    return rid, last.finish_reason, n


def test_many_concurrent_streams_with_disconnects(tiny):
    """100 concurrent streams (a KV pool small enough to force preemption), every 10th leaves mid-stream: the rest
    get exactly their token counts, and no block is leaked."""
    rng = random.Random(0)

    async def main():
        engine = make(tiny, max_num_seqs=16, num_blocks=24)
        await engine.start()
        jobs = []
        for i in range(100):
            ids = [rng.randrange(3, 49152) for _ in range(rng.randrange(2, 20))]
            want = rng.randrange(1, 12)
            jobs.append((want, consume(engine, f"r{i}", ids, want, leave_after=1 if i % 10 == 0 else None)))
        results = await asyncio.gather(*(j for _, j in jobs))
        await asyncio.sleep(0)
        for _ in range(50):  # aborts of leavers are applied at the next step boundary
            if engine.stats()["num_free_blocks"] == engine.stats()["num_total_blocks"]:
                break
            await asyncio.sleep(0.02)
        stats = engine.stats()
        await engine.shutdown()
        return jobs, results, stats

    jobs, results, stats = asyncio.run(main())
    for (want, _), (rid, reason, n) in zip(jobs, results):
        if int(rid[1:]) % 10 == 0:
            assert reason in ("left", "length")
        else:
            assert (reason, n) == ("length", want)
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0
    assert stats["num_aborted"] >= 1 and stats["num_preemptions"] > 0


def test_abort_ends_the_stream_and_frees_blocks(tiny):
    async def main():
        engine = make(tiny)
        await engine.start()
        outs = []

        async def reader():
            async for out in engine.generate([5, 6, 7], SamplingParams(max_tokens=200, temperature=0,
                                                                       ignore_eos=True), "x"):
                outs.append(out)
                if len(outs) == 2:
                    await engine.abort("x")
        await asyncio.wait_for(reader(), 60)
        free = engine.stats()["num_free_blocks"]
        await engine.shutdown()
        return outs, free, engine.stats()["num_total_blocks"]

    outs, free, total = asyncio.run(main())
    assert outs[-1].finished and outs[-1].finish_reason == "abort" and len(outs[-1].output_token_ids) < 200
    assert free == total


def test_cancelled_consumer_aborts(tiny):
    async def main():
        engine = make(tiny)
        await engine.start()
        got = asyncio.Event()

        async def reader():
            async for _ in engine.generate([5, 6], SamplingParams(max_tokens=300, temperature=0, ignore_eos=True),
                                           "c"):
                got.set()
        task = asyncio.create_task(reader())
        await got.wait()
        task.cancel()  # what a server does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if engine.stats()["num_free_blocks"] == engine.stats()["num_total_blocks"]:
                break
            await asyncio.sleep(0.02)
        s = engine.stats()
        await engine.shutdown()
        return s

    s = asyncio.run(main())
    assert s["num_free_blocks"] == s["num_total_blocks"] and s["num_aborted"] == 1 and s["num_running"] == 0


def test_errors_before_queueing_and_shutdown(tiny):
    async def main():
        engine = make(tiny, max_model_len=64)
        assert engine.max_model_len == 64 and engine.model_name == "tiny" and engine.tokenizer is tiny.tokenizer
        with pytest.raises(PromptTooLongError):
            async for _ in engine.generate([5] * 60, SamplingParams(max_tokens=10), "long"):
                pass
        assert engine.stats()["num_requests"] == 0  # nothing was queued
        await engine.start()
        agen = engine.generate([5, 6], SamplingParams(max_tokens=60, temperature=0, ignore_eos=True), "d")
        first = await agen.__anext__()
        with pytest.raises(ValueError, match="already in use"):
            async for _ in engine.generate([5], SamplingParams(max_tokens=1), "d"):
                pass
        await engine.shutdown()  # unfinished requests end with "abort"
        rest = [o async for o in agen]
        return first, rest, engine.stats()

    first, rest, stats = asyncio.run(main())
    assert not first.finished and rest[-1].finish_reason == "abort"
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
