"""ProcessEngine (the engine in its own process) against AsyncEngine (the same engine in a thread): the same tokens and
text, the same validation errors, aborts that return once applied there and free the blocks, shutdown; and a child
that dies (killed, or an exception in a step) fails every stream and turns /health unhealthy instead of hanging.

CPU: one SmolLM2-shaped engine process (2 random layers, the real tokenizer) for the module; the tests that stop,
break or kill their engine each spawn a tiny one (a 1-layer model with a byte tokenizer: about a second). The
server tests of test_server_engine.py also run over a ProcessEngine (the `process` parameter there).
"""
from __future__ import annotations

import asyncio
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing

import httpx
import openai
import pytest

from common.errors import PromptTooLongError
from common.sampling import SamplingParams
from phase4_scheduler.async_engine import AsyncEngine
from phase4_scheduler.frontend import EngineDeadError
from phase4_scheduler.launch import BackgroundServer
from phase4_scheduler.process_engine import ProcessEngine
from phase4_scheduler.server import create_app
from phase4_scheduler.tests.process_helpers import break_next_step, pause, tiny_byte_engine
from phase4_scheduler.tests.server_helpers import wait_until

pytestmark = pytest.mark.timeout(180)  # a hung engine fails with a traceback, never blocks the suite

MODEL = "smollm2-135m"
KW = dict(random_weights=True, num_layers=2, device="cpu", max_model_len=256, num_blocks=40, max_num_seqs=32)
TINY = dict(num_blocks=512, block_size=16, max_model_len=4096)
GREEDY = dict(temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def engines():
    """(AsyncEngine, ProcessEngine) over the same model; the engine process loads while this one builds its own."""
    with ThreadPoolExecutor(1) as pool:
        spawning = pool.submit(ProcessEngine.from_model, MODEL, **KW)
        local = AsyncEngine.from_model(MODEL, **KW)
        remote = spawning.result()
    if local.tokenizer is None:
        remote.close()
        pytest.skip("the SmolLM2 tokenizer asset is missing (run `make setup`)")
    yield local, remote
    remote.close()


@pytest.fixture(scope="module")
def local(engines):
    return engines[0]


@pytest.fixture(scope="module")
def remote(engines):
    return engines[1]


async def collect(engine, ids, params, rid):
    return [o async for o in engine.generate(ids, params, rid)]


def test_outputs_equal_the_in_process_engine(local, remote):
    """Token- and text-identical outputs, output by output, for greedy, stop-string and seeded requests."""
    tok = local.tokenizer

    async def main():
        probe = await collect(local, tok.encode("Once upon a time", add_special_tokens=True),
                              SamplingParams(max_tokens=16, **GREEDY), "probe")
        text = probe[-1].text
        stop = text[len(text) // 2:len(text) // 2 + 3]
        jobs = [("The capital of France is", SamplingParams(max_tokens=12, **GREEDY)),
                ("Once upon a time", SamplingParams(max_tokens=16, stop=[stop], **GREEDY)),
                ("def main():", SamplingParams(max_tokens=20, temperature=0.8, top_k=50, seed=3, ignore_eos=True)),
                ("café 你好 🎉 " * 8, SamplingParams(max_tokens=9, **GREEDY)),
                ("x", SamplingParams(max_tokens=1, **GREEDY))]
        ids = [tok.encode(p, add_special_tokens=True) for p, _ in jobs]
        ref = await asyncio.gather(*(collect(local, i, p, f"r{k}") for k, (i, (_, p)) in enumerate(zip(ids, jobs))))
        # one batch in both engines (AsyncEngine applies these adds together; here a pause in the engine process
        # holds its loop until all have arrived), so the batch shapes and therefore the float sums are the same
        gate = asyncio.ensure_future(remote.call(pause, 0.3))
        await asyncio.sleep(0)
        got = await asyncio.gather(*(collect(remote, i, p, f"r{k}") for k, (i, (_, p)) in enumerate(zip(ids, jobs))))
        await gate
        await local.shutdown()
        return stop, ref, got, remote.stats()

    stop, ref, got, stats = asyncio.run(main())
    for want, have in zip(ref, got):
        assert [(o.request_id, o.new_token_ids, o.output_token_ids, o.text_delta, o.finished) for o in have] == \
            [(o.request_id, o.new_token_ids, o.output_token_ids, o.text_delta, o.finished) for o in want]
        w, h = want[-1], have[-1]
        assert (h.text, h.finish_reason, h.stop_reason, h.prompt_token_ids) == \
            (w.text, w.finish_reason, w.stop_reason, w.prompt_token_ids)
    assert ref[1][-1].finish_reason == "stop" and ref[1][-1].stop_reason == stop  # the stop string was hit
    assert [len(r[-1].output_token_ids) for r in ref] == [12, len(ref[1][-1].output_token_ids), 20, 9, 1]
    assert stats["num_free_blocks"] == stats["num_total_blocks"] == 40 and stats["num_running"] == 0


BAD = [([], SamplingParams()), ([5, 49152], SamplingParams()), ([5, 2.0], SamplingParams()),
       ([5] * 300, SamplingParams(max_tokens=4)), ([5] * 200, SamplingParams(max_tokens=100)),
       ([5], SamplingParams(stop=[""])), ([5], SamplingParams(seed=1.5)), ([5], "greedy please")]


def test_validation_errors_are_the_engines_and_nothing_is_sent(local, remote):
    for ids, params in BAD:
        with pytest.raises((ValueError, TypeError)) as want:
            local.engine.validate(ids, params)
        with pytest.raises((ValueError, TypeError)) as got:
            remote.validate(ids, params)
        assert (type(got.value), str(got.value)) == (type(want.value), str(want.value))
    sent = remote._num_sent

    async def main():
        with pytest.raises(PromptTooLongError, match="context of 256 tokens"):
            await collect(remote, [5] * 250, SamplingParams(max_tokens=10), "long")
        return [o async for o in remote.generate([5, 6], SamplingParams(max_tokens=2, **GREEDY), "ok")]

    assert asyncio.run(main())[-1].finish_reason == "length"
    assert remote._num_sent == sent + 1  # only the valid request crossed the pipe


def test_abort_returns_once_applied_and_leavers_free_their_blocks(remote):
    params = SamplingParams(max_tokens=200, **GREEDY)

    async def main():
        await remote.start()
        agen = remote.generate([5, 6, 7], params, "ab")
        first = [await agen.__anext__(), await agen.__anext__()]
        await remote.abort("ab")
        after_abort = remote.stats()
        rest = [o async for o in agen]
        got = asyncio.Event()

        async def reader():
            async for _ in remote.generate([8, 9], params, "cancelled"):
                got.set()
        task = asyncio.create_task(reader())
        await got.wait()
        task.cancel()  # what the server does when a client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task
        async with aclosing(remote.generate([10, 11], params, "left")) as agen:
            async for _ in agen:
                break  # the consumer leaves: aclose() aborts
        for _ in range(200):
            s = remote.stats()
            if s["num_free_blocks"] == s["num_total_blocks"] and s["num_running"] == 0:
                break
            await asyncio.sleep(0.02)
        return first, after_abort, rest, s

    first, after_abort, rest, s = asyncio.run(main())
    assert not first[-1].finished and after_abort["num_free_blocks"] == after_abort["num_total_blocks"]
    assert rest[-1].finished and rest[-1].finish_reason == "abort" and len(rest[-1].output_token_ids) < 200
    assert s["num_free_blocks"] == s["num_total_blocks"] and s["num_waiting"] == 0 and s["num_aborted"] >= 3


def test_shutdown_ends_unfinished_requests_with_abort():
    async def main():
        engine = ProcessEngine(tiny_byte_engine, TINY)
        await engine.start()
        agen = engine.generate([104, 105], SamplingParams(max_tokens=3000, **GREEDY), "d")
        first = await agen.__anext__()
        await engine.shutdown()
        rest = [o async for o in agen]
        with pytest.raises(EngineDeadError, match="shut down"):
            await collect(engine, [104], SamplingParams(max_tokens=1), "late")
        return engine, first, rest

    engine, first, rest = asyncio.run(main())
    assert not first.finished and rest[-1].finish_reason == "abort" and len(rest[-1].output_token_ids) < 3000
    assert engine.stats()["num_free_blocks"] == engine.stats()["num_total_blocks"] == 512
    assert not engine.errored and not engine.is_running and engine._proc.exitcode == 0


def test_startup_error_is_raised_with_its_type():
    with pytest.raises(ValueError, match="holds no block"):
        ProcessEngine(tiny_byte_engine, {"kv_memory": "16"})


def test_exception_in_the_engine_process_fails_every_stream():
    async def main():
        engine = ProcessEngine(tiny_byte_engine, TINY)
        await engine.start()
        params = SamplingParams(max_tokens=3000, **GREEDY)
        agens = [engine.generate([104 + i], params, f"s{i}") for i in range(3)]
        for a in agens:
            await a.__anext__()
        assert await engine.call(break_next_step, "boom in step") is True
        for a in agens:
            with pytest.raises(EngineDeadError, match="RuntimeError: boom in step") as e:
                async for _ in a:
                    pass
        assert "boom in step" in "".join(getattr(e.value.__cause__, "__notes__", []))  # the child's traceback
        with pytest.raises(EngineDeadError, match="restart the server"):
            await collect(engine, [104], params, "new")
        await engine.abort("s0")  # returns: nothing is left to free
        await engine.shutdown()
        return engine

    engine = asyncio.run(main())
    assert engine.errored and engine._proc.exitcode == 1


def test_killed_engine_process_fails_clients_and_health():
    engine = ProcessEngine(tiny_byte_engine, TINY)
    with BackgroundServer(create_app(engine, served_model_name="tiny")) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=60)
        assert httpx.get(url + "/health").json()["status"] == "ok"
        outcome = {}

        def non_streamed():
            try:
                client.completions.create(model="tiny", prompt="abc", max_tokens=3000, extra_body={"ignore_eos": True})
                outcome["status"] = 200
            except openai.APIStatusError as e:
                outcome["status"], outcome["message"] = e.status_code, e.message
        waiter = threading.Thread(target=non_streamed)
        waiter.start()
        chunks = iter(client.completions.create(model="tiny", prompt="hello", max_tokens=3000, stream=True,
                                                extra_body={"ignore_eos": True}))
        next(chunks)
        assert wait_until(lambda: engine.stats()["num_running"] == 2, 10), engine.stats()
        os.kill(engine.pid, signal.SIGKILL)
        with pytest.raises(openai.APIError, match="killed by SIGKILL"):
            for _ in chunks:
                pass
        waiter.join(60)
        assert outcome["status"] == 500 and "killed by SIGKILL" in outcome["message"]
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        assert "killed by SIGKILL" in health.json()["error"]
        with pytest.raises(openai.InternalServerError) as refused:
            client.completions.create(model="tiny", prompt="hi", max_tokens=2, stream=True)
        assert refused.value.status_code == 503 and "not running" in refused.value.message


def test_in_process_engine_failure_also_turns_health_unhealthy():
    """The same dead state for AsyncEngine: its step loop raised, so /health answers 503 and requests are refused."""
    engine = AsyncEngine(tiny_byte_engine(**TINY), model_name="tiny")
    break_next_step(engine.engine, "boom in the thread")
    with BackgroundServer(create_app(engine)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=60)
        with pytest.raises(openai.InternalServerError, match="boom in the thread"):
            client.completions.create(model="tiny", prompt="hi", max_tokens=2)
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and "boom in the thread" in health.json()["error"]
        with pytest.raises(openai.InternalServerError) as refused:
            client.completions.create(model="tiny", prompt="hi", max_tokens=2)
        assert refused.value.status_code == 503 and "restart the server" in refused.value.message
