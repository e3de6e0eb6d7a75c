"""The HTTP server against a fake engine (fast): wire format, every error path, auth, metrics, disconnects, load.

The server runs under uvicorn in a background thread; clients are the official `openai` package and raw httpx.
"""
from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from phase4_scheduler.launch import BackgroundServer
from phase4_scheduler.server import create_app
from phase4_scheduler.tests.fake_engine import FakeEngine, expected_text
from phase4_scheduler.tests.server_helpers import parse_metrics, run_concurrent, wait_until

pytestmark = pytest.mark.timeout(180)  # a hung server fails with a traceback, never blocks the suite

MODEL = FakeEngine.model_name


@pytest.fixture(scope="module")
def served():
    engine = FakeEngine(step_s=0.001)
    with BackgroundServer(create_app(engine)) as url:
        yield engine, url


@pytest.fixture()
def client(served):
    return openai.OpenAI(base_url=served[1] + "/v1", api_key="unused", max_retries=0)


def sse_events(resp: httpx.Response) -> list[str]:
    """The data payloads of an SSE body, checking the framing (`data: ...` lines separated by blank lines)."""
    body = resp.text
    assert body.endswith("\n\n")
    events = body.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events[:3]
    return [e[len("data: "):] for e in events]


# ---- the happy paths ----------------------------------------------------------------------------------------------

def test_completion_non_streaming(client):
    prompt = "Hello"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=7)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == MODEL
    assert r.choices[0].text == expected_text(len(prompt), 7)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 7, 12)


def test_completion_streaming_with_usage(client, served):
    prompt = "abc"
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=9, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected_text(3, 9)
    assert len({c.id for c in chunks}) == 1 and all(c.object == "text_completion" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 9
    assert chunks[-1].usage.prompt_tokens == 3 and chunks[-1].usage.total_tokens == 12
    # the raw stream: OpenAI's chunk shape, then [DONE]
    r = httpx.post(served[1] + "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 3,
                                                        "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    first = json.loads(events[0])
    assert set(first) == {"id", "object", "created", "model", "choices"}
    assert set(first["choices"][0]) == {"index", "text", "logprobs", "finish_reason"}


def test_chat_non_streaming_and_streaming(client):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    n_prompt = len("<system>be brief\n<user>hi\n<assistant>")
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_completion_tokens=5)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected_text(n_prompt, 5)
    assert r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens == 5
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected_text(n_prompt, 6)
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].choices[0].delta.content is None


def test_token_id_prompt_and_text_parts(client):
    r = client.completions.create(model=MODEL, prompt=[104, 105], max_tokens=3)  # the bytes of "hi"
    assert r.choices[0].text == expected_text(2, 3) and r.usage.prompt_tokens == 2
    r = client.completions.create(model=MODEL, prompt=["hi"], max_tokens=3)  # a batch of one
    assert r.choices[0].text == expected_text(2, 3)
    parts = [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]
    a = client.chat.completions.create(model=MODEL, messages=[{"role": "developer", "content": parts}], max_tokens=4)
    b = client.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "hi"}], max_tokens=4)
    n_prompt = len("<system>hi\n<assistant>")
    assert a.choices[0].message.content == b.choices[0].message.content == expected_text(n_prompt, 4)


def test_stop_strings_and_eos(client):
    prompt = "xy"  # generates "cdefgh..."
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, stop=["fg", "zz"])
    assert r.choices[0].text == "cde" and r.choices[0].finish_reason == "stop"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, stop="e")
    assert r.choices[0].text == "cd"
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, stop="f", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "cde"


def test_eos_stops_unless_ignored():
    engine = FakeEngine(eos_after=3)
    with BackgroundServer(create_app(engine)) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        r = c.completions.create(model=MODEL, prompt="ab", max_tokens=10)
        assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 4 and r.choices[0].text == "cde"
        r = c.completions.create(model=MODEL, prompt="ab", max_tokens=10, extra_body={"ignore_eos": True})
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 10
    assert engine.started == 1 and engine.shut_down == 1  # the app's lifespan owns the engine


def test_served_model_name():
    with BackgroundServer(create_app(FakeEngine(), served_model_name="my-llm")) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        assert [m.id for m in c.models.list().data] == ["my-llm"]
        assert c.completions.create(model="my-llm", prompt="a", max_tokens=1).model == "my-llm"
        with pytest.raises(openai.NotFoundError):
            c.completions.create(model=MODEL, prompt="a", max_tokens=1)


def test_models_and_health(client, served):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    h = httpx.get(served[1] + "/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"


# ---- errors: status code + OpenAI error JSON ----------------------------------------------------------------------

@pytest.mark.parametrize("body, status, param, code, words", [
    ({"model": MODEL, "prompt": "hi", "n": 17}, 400, "n", None, "less than or equal to 16"),
    ({"model": MODEL, "prompt": "hi", "n": 0}, 400, "n", None, "greater than or equal to 1"),
    ({"model": MODEL, "prompt": "hi", "temperature": 3}, 400, "temperature", None, "less than or equal to 2"),
    ({"model": MODEL, "prompt": "hi", "top_p": 0}, 400, "top_p", None, "greater than 0"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens", None, "greater than or equal to 1"),
    ({"model": MODEL, "prompt": "hi", "top_k": -5}, 400, "top_k", None, "greater than or equal to -1"),
    ({"model": MODEL, "prompt": "hi", "stop": ["ok", ""]}, 400, "stop", None, "non-empty"),
    ({"model": MODEL, "prompt": ["a"] * 65}, 400, "prompt", None, "at most 64 per request"),
    ({"model": MODEL, "prompt": ["a", ""]}, 400, "prompt", None, "prompt 1 of the batch is empty"),
    ({"model": MODEL, "prompt": ["a", "x" * 300]}, 400, "prompt", "context_length_exceeded", "300 tokens"),
    ({"model": MODEL, "prompt": ""}, 400, "prompt", None, "empty"),
    ({"model": MODEL, "prompt": [5, 300]}, 400, "prompt", None, "outside the vocabulary"),
    ({"model": MODEL, "prompt": "hi", "logprobs": 21}, 400, "logprobs", None, "less than or equal to 20"),
    ({"model": MODEL, "prompt": "hi", "logit_bias": {"five": 1}}, 400, "logit_bias", None, "token ids"),
    ({"model": MODEL, "prompt": "hi", "logit_bias": {"5": 101}}, 400, "logit_bias", None, "[-100, 100]"),
    ({"model": MODEL, "prompt": "hi", "stop_token_ids": [3, -1]}, 400, "stop_token_ids", None,
     "greater than or equal to 0"),
    ({"model": MODEL, "prompt": "hi", "presence_penalty": 2.5}, 400, "presence_penalty", None,
     "less than or equal to 2"),
    ({"model": MODEL, "prompt": "hi", "repetition_penalty": 0}, 400, "repetition_penalty", None, "greater than 0"),
    ({"model": MODEL, "prompt": "hi", "response_format": {"type": "json_object"}}, 400, "response_format", None,
     "only plain text"),
    ({"model": MODEL, "prompt": "hi", "temperature": "warm"}, 400, "temperature", None, "valid number"),
    # a seed torch cannot take raised inside the engine's step and killed the engine (every request, then 503s)
    ({"model": MODEL, "prompt": "hi", "seed": 2 ** 70}, 400, "seed", None, "less than or equal to"),
    ({"model": MODEL, "prompt": "hi", "seed": -(2 ** 63) - 1}, 400, "seed", None, "greater than or equal to"),
    ({"prompt": "hi"}, 400, "model", None, "Field required"),
    ({"model": "gpt-4", "prompt": "hi"}, 404, "model", "model_not_found", "`gpt-4` does not exist"),
    ({"model": MODEL, "prompt": "x" * 300}, 400, "prompt", "context_length_exceeded", "300 tokens"),
    ({"model": MODEL, "prompt": "x" * 200, "max_tokens": 100}, 400, "prompt", "context_length_exceeded",
     "at most 56 new tokens"),
])
def test_completion_errors(served, body, status, param, code, words):
    for stream in (False, True):
        r = httpx.post(served[1] + "/v1/completions", json={**body, "stream": stream})
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "invalid_request_error" and err["param"] == param and err["code"] == code
        assert words in err["message"], err["message"]


def test_sampling_params_errors_name_their_field(served):
    """A value only SamplingParams refuses (Python's JSON reads Infinity) is a 400 whose `param` is the field."""
    r = httpx.post(served[1] + "/v1/completions", content=b'{"model": "%s", "prompt": "hi", "repetition_penalty": '
                   b'Infinity}' % MODEL.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "repetition_penalty", r.text


def test_seed_range_is_int64_with_room_for_n_choices(client):
    """The seed's range is int64's (vLLM's): choice i of n samples with seed + i, which torch's generator still
    takes at the top of the range."""
    r = client.completions.create(model=MODEL, prompt="hi", max_tokens=2, n=16, seed=2 ** 63 - 1)
    assert len(r.choices) == 16
    assert client.completions.create(model=MODEL, prompt="hi", max_tokens=2, seed=-(2 ** 63)).usage


@pytest.mark.parametrize("body, words", [
    ({"model": MODEL, "messages": []}, "at least 1 item"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "text-only"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "a content part of type 'text' needs a 'text' string, got NoneType"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
     "tool calling"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 10_000},
     "exceeds the context of 256 tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
     "top_logprobs needs logprobs=true"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 21},
     "less than or equal to 20"),
])
def test_chat_errors(served, body, words):
    r = httpx.post(served[1] + "/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]


def test_prompt_larger_than_the_kv_pool_is_named():
    """A KV pool smaller than the context (a small --kv-memory): a prompt that alone fills it is told to shorten
    the prompt; it was told to lower max_tokens, which a chat request without max_tokens never set. A prompt that
    fits with room to spare still hears about max_tokens."""
    engine = FakeEngine(max_model_len=256, num_blocks=25)  # 25 blocks x 4 = 100 tokens
    engine.num_tokens_capacity = 100
    with BackgroundServer(create_app(engine)) as url:
        n_chat = len("<user>" + "x" * 120 + "\n<assistant>")
        for path, body, n in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 120}]}, n_chat),
                              ("/v1/completions", {"prompt": "x" * 120, "max_tokens": 5}, 120)):
            r = httpx.post(url + path, json={"model": MODEL, **body})
            err = r.json()["error"]
            assert r.status_code == 400 and err["code"] == "context_length_exceeded", r.text
            assert f"{n} tokens" in err["message"] and "at most 100 tokens" in err["message"], err
            assert "shorten" in err["message"] and "max_tokens" not in err["message"], err
        r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x" * 60, "max_tokens": 50})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert "max_tokens" in r.json()["error"]["message"]


def test_malformed_json_and_unknown_route(served):
    r = httpx.post(served[1] + "/v1/completions", content=b'{"model": "x", "prompt": ',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "Malformed JSON" in r.json()["error"]["message"]
    r = httpx.post(served[1] + "/v1/completions", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    # a body that is not a JSON object says what it is and what to send (it said "Field required" /
    # "Input should be a valid dictionary or object to extract fields from")
    good = json.dumps({"model": MODEL, "prompt": "hi"}).encode()
    for body, ctype, words in ((b"", "application/json", "body is empty"),
                               (b"[1, 2]", "application/json", "must be a JSON object, not an array"),
                               (b"null", "application/json", "must be a JSON object, not null"),
                               (good, "application/x-www-form-urlencoded", "Content-Type: application/json"),
                               (good, None, "Content-Type: application/json")):
        r = httpx.post(served[1] + "/v1/completions", content=body, headers={"content-type": ctype} if ctype else {})
        err = r.json()["error"]
        assert r.status_code == 400 and words in err["message"] and err["param"] is None, (body, ctype, err)
    r = httpx.get(served[1] + "/v1/engines")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="hi")
    assert e.value.code == "model_not_found" and e.value.status_code == 404
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=30)
    assert e.value.param == "n"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="z" * 400, stream=True)
    assert e.value.code == "context_length_exceeded"


def test_api_key():
    engine = FakeEngine()
    with BackgroundServer(create_app(engine, api_key="s3cret")) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "hi"}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/v1/models").status_code == 401
        # the key is checked before the body: a client without it learns nothing about what it sent (OpenAI's order)
        for body in (b'{"model": ', b"", b"[1]", b'{"model": 5}'):
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                r = httpx.post(url + "/v1/chat/completions", content=body,
                               headers={"content-type": "application/json", **headers})
                assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (body, r.text)
        r = httpx.post(url + "/v1/completions", content=b'{"model": ',
                       headers={"content-type": "application/json", "Authorization": "Bearer s3cret"})
        assert r.status_code == 400 and "Malformed JSON" in r.json()["error"]["message"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(model=MODEL, prompt="hi", max_tokens=2).usage.completion_tokens == 2
        assert httpx.get(url + "/health").status_code == 200  # probes need no key
        assert httpx.get(url + "/metrics").status_code == 200
    with BackgroundServer(create_app(FakeEngine(), api_key="")) as url:  # an empty key (unset env var) is no key
        assert httpx.get(url + "/v1/models").status_code == 200


# ---- metrics ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scraped():
    """/metrics after 3 plain + 1 streamed request and one 404."""
    engine = FakeEngine()
    with BackgroundServer(create_app(engine)) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        for _ in range(3):
            c.completions.create(model=MODEL, prompt="hello", max_tokens=4)
        list(c.completions.create(model=MODEL, prompt="hello", max_tokens=4, stream=True))
        httpx.post(url + "/v1/completions", json={"model": "nope", "prompt": "hi"})
        return httpx.get(url + "/metrics")


def test_metrics_exposition(scraped):
    r = scraped
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = parse_metrics(r.text)
    lab = f'{{model_name="{MODEL}"}}'
    assert m[f"titan:num_requests_running{lab}"] == 0 and m[f"titan:num_requests_waiting{lab}"] == 0
    assert m[f"titan:kv_cache_usage_perc{lab}"] == 0
    assert m['titan:request_success_total{finished_reason="length"}'] == 4
    assert m['titan:request_errors_total{status="404"}'] == 1
    assert m["titan:generation_tokens_total"] == 16 and m["titan:prompt_tokens_total"] == 20
    for name, count in (("time_to_first_token_seconds", 4), ("e2e_request_latency_seconds", 4),
                        ("inter_token_latency_seconds", 12)):
        buckets = [v for k, v in m.items() if k.startswith(f"titan:{name}_bucket")]
        assert buckets == sorted(buckets) and buckets[-1] == count == m[f"titan:{name}_count"]
        assert m[f"titan:{name}_sum"] > 0


def test_metrics_parse_with_prometheus_client(scraped):
    parser = pytest.importorskip("prometheus_client.parser")  # an independent parser, where it is installed
    families = {f.name: f for f in parser.text_string_to_metric_families(scraped.text)}
    assert families["titan:e2e_request_latency_seconds"].type == "histogram"
    assert families["titan:num_requests_running"].type == "gauge"
    # a counter's samples belong to its typed family (TYPE names `x_total`, as prometheus_client writes it), not
    # to an untyped one beside an empty `counter`
    assert not [f.name for f in families.values() if f.type in ("unknown", "untyped")]
    success = families["titan:request_success"]
    assert success.type == "counter" and [(s.name, s.labels, s.value) for s in success.samples] == \
        [("titan:request_success_total", {"finished_reason": "length"}, 4)]
    assert families["titan:generation_tokens"].type == "counter" and families["titan:generation_tokens"].samples


# ---- disconnects and load -----------------------------------------------------------------------------------------

def test_disconnect_mid_stream_aborts(served):
    engine, url = served
    with httpx.Client() as h:
        with h.stream("POST", url + "/v1/completions",
                      json={"model": MODEL, "prompt": "abc", "max_tokens": 200, "stream": True}) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            rid = json.loads(first[6:])["id"]
    assert wait_until(lambda: rid in engine.abort_calls), "the server did not abort the request"
    assert wait_until(lambda: engine.num_free_blocks == engine.num_total_blocks)


def test_disconnect_aborts_every_choice(served):
    """n=3, streamed and not: a client that leaves mid-generation gets all three choices' requests aborted and
    their blocks back."""
    engine, url = served
    with httpx.Client() as h:
        with h.stream("POST", url + "/v1/completions",
                      json={"model": MODEL, "prompt": "abc", "max_tokens": 200, "stream": True, "n": 3}) as r:
            first = next(line for line in r.iter_lines() if line.startswith("data: "))
            rid = json.loads(first[6:])["id"]
    assert wait_until(lambda: {f"{rid}-{i}" for i in range(3)} <= set(engine.abort_calls)), engine.abort_calls
    assert wait_until(lambda: engine.num_free_blocks == engine.num_total_blocks)

    slow = FakeEngine(step_s=0.02)  # 200 tokens take 4 s: the non-streamed choices are still running when it leaves
    with BackgroundServer(create_app(slow)) as slow_url:
        async def leave_early():
            async with httpx.AsyncClient(base_url=slow_url, timeout=30) as c:
                task = asyncio.create_task(c.post("/v1/completions", json={"model": MODEL, "prompt": "xyz",
                                                                           "max_tokens": 200, "n": 3}))
                assert await asyncio.to_thread(wait_until, lambda: len(slow.running) == 3)
                task.cancel()
        asyncio.run(leave_early())
        assert wait_until(lambda: len(slow.abort_calls) == 3), slow.abort_calls
        assert wait_until(lambda: slow.num_free_blocks == slow.num_total_blocks)
        assert slow.counters["num_finished"] == 0


def with_asgi_spec(app, version: str | None):
    """The app as served by a server speaking ASGI `version` (uvicorn says 2.3; 2.4 servers raise on a dead send)."""
    if version is None:
        return app

    async def wrapped(scope, receive, send):
        if scope["type"] == "http":
            scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": version}}
        await app(scope, receive, send)
    return wrapped


@pytest.mark.parametrize("spec", [None, "2.4"])
def test_disconnect_while_queued_and_non_streaming(spec):
    engine = FakeEngine(num_blocks=10, block_size=4, step_s=0.02)  # room for one 40-token request
    with BackgroundServer(with_asgi_spec(create_app(engine), spec)) as url:
        async def main():
            async with httpx.AsyncClient(base_url=url, timeout=30) as h:
                body = {"model": MODEL, "prompt": "ab", "max_tokens": 30}
                hog = asyncio.create_task(h.post("/v1/completions", json=body))
                assert await asyncio.to_thread(wait_until, lambda: engine.running)
                queued = asyncio.create_task(h.post("/v1/completions", json={**body, "stream": True}))
                assert await asyncio.to_thread(wait_until, lambda: engine.waiting)
                queued.cancel()  # leaves while waiting for admission: nothing was streamed yet
                hog.cancel()  # a non-streamed request whose client leaves mid-generation
                assert await asyncio.to_thread(wait_until, lambda: len(engine.abort_calls) == 2)
        asyncio.run(main())
        assert wait_until(lambda: engine.num_free_blocks == engine.num_total_blocks and not engine.waiting)
        assert engine.counters["num_finished"] == 0


def test_100_concurrent_streams_10pct_aborted_fake():
    engine = FakeEngine(num_blocks=150, step_s=0.003)  # 150 blocks of 4: ~25 requests at once, the rest queue
    with BackgroundServer(create_app(engine)) as url:
        results = asyncio.run(run_concurrent(url, MODEL))
        assert wait_until(lambda: engine.num_free_blocks == engine.num_total_blocks, 10)
    done = [r for r in results if r is not None]
    assert len(done) == 90
    assert all(u.completion_tokens == 12 and reason == "length" for u, reason in done)
    assert engine.counters["max_waiting"] > 10  # overload queued rather than failed
    assert engine.counters["num_finished"] == 90 and len(set(engine.abort_calls)) == 10


@pytest.mark.parametrize("path, body, where", [
    ("/v1/completions", {"model": MODEL, "prompt": "\ud800", "max_tokens": 2}, "prompt"),
    ("/v1/completions", {"model": "\udfff", "prompt": "hi", "max_tokens": 2}, "model"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "logit_bias": {"\ud801": 1}}, "logit_bias.\\ud801"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "a\udc00b"}]},
     "messages.0.content"),
])
def test_a_lone_surrogate_is_a_400_and_the_connection_lives(served, path, body, where):
    """JSON may escape half a surrogate pair ("\\ud800"); Python's json takes it and nothing can encode it: it was
    a 500 whose own error message failed to render, and the client's connection was reset with it."""
    with httpx.Client(timeout=30) as c:
        r = c.post(served[1] + path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert r.json()["error"]["message"].startswith(f"{where}: the text holds a lone UTF-16 surrogate")
        ok = c.post(served[1] + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
        assert ok.status_code == 200  # same keep-alive connection


def test_fuzzed_bodies_never_get_a_5xx(served):
    """Valid bodies with 1-3 fields replaced by odd JSON values (types, extremes, empties, nesting, lone
    surrogates, unknown fields): every answer is a 2xx or an OpenAI-style 4xx, over one keep-alive connection."""
    import random

    rng = random.Random(7)
    odd = [None, True, 0, -1, 2 ** 31, 2 ** 63, 2 ** 64, 1e308, 0.5, "", "x", [], [1], ["a"], {}, {"a": 1}, [[1]],
           [None], "\u0000", "\ud800"]
    bases = [("/v1/completions", {"model": MODEL, "prompt": "hello", "max_tokens": 3, "temperature": 0.5,
                                  "top_p": 0.9, "n": 1, "stop": ["x"], "logprobs": 2, "seed": 1, "logit_bias": {"5": 1},
                                  "stream_options": {"include_usage": True}, "stop_token_ids": [3], "echo": False}),
             ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                       "max_tokens": 3, "logprobs": True, "top_logprobs": 2, "stop": "x",
                                       "response_format": {"type": "text"}})]
    statuses = {}
    with httpx.Client(timeout=30) as c:
        for _ in range(300):
            path, base = rng.choice(bases)
            body = json.loads(json.dumps(base))
            for _ in range(rng.randrange(1, 4)):
                body[rng.choice([*body, "stream", "zzz"])] = rng.choice(odd)
            r = c.post(served[1] + path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, (r.status_code, r.text[:300], body)
            if r.status_code >= 400:
                assert set(r.json()["error"]) >= {"message", "type", "param", "code"}
    assert statuses.get(200, 0) > 10 and statuses.get(400, 0) > 100
