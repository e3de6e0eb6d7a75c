"""The server over the real engine, driven by the official `openai` client (CPU, a 2-layer random-weights SmolLM2
with its real tokenizer, so it is fast and never stops early by chance when `ignore_eos` is set), the engine in a
thread (AsyncEngine) and in its own process (ProcessEngine: block counts then come from the child's stats).

The acceptance test of the issue: 100 concurrent streamed requests, 10% closed mid-stream by their clients; the
other 90 get exactly their token counts, and afterwards no KV block is in use.
"""
from __future__ import annotations

import asyncio
import threading
import time

import httpx
import openai
import pytest

from phase4_scheduler.async_engine import AsyncEngine
from phase4_scheduler.launch import BackgroundServer
from phase4_scheduler.process_engine import ProcessEngine
from phase4_scheduler.server import create_app
from phase4_scheduler.tests.server_helpers import parse_metrics, run_concurrent, wait_until

pytestmark = pytest.mark.timeout(180)  # a hung server fails with a traceback, never blocks the suite

MODEL = "smollm2-135m"
NUM_BLOCKS = 40  # x 16 tokens: fewer than 100 requests need, so requests queue (and may be preempted)


@pytest.fixture(scope="module", params=["thread", "process"])
def served(request):
    """The server over AsyncEngine (the engine steps in a thread of this process) and over ProcessEngine (in its
    own process, as `titan serve --engine-process on` runs it): every test here runs against both."""
    engine_cls = AsyncEngine if request.param == "thread" else ProcessEngine
    engine = engine_cls.from_model(MODEL, random_weights=True, num_layers=2, device="cpu", max_model_len=256,
                                   num_blocks=NUM_BLOCKS, max_num_seqs=32)
    if engine.tokenizer is None:
        if request.param == "process":
            engine.close()
        pytest.skip("the SmolLM2 tokenizer asset is missing (run `make setup`)")
    with BackgroundServer(create_app(engine)) as url:
        yield engine, url


@pytest.fixture()
def client(served):
    return openai.OpenAI(base_url=served[1] + "/v1", api_key="unused", max_retries=0, timeout=120)


def greedy(**kw) -> dict:
    return dict(temperature=0, extra_body={"ignore_eos": True}, **kw)


def test_completion_stream_matches_non_stream(client, served):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=10, **greedy())
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 10
    assert r.usage.prompt_tokens == len(served[0].tokenizer.encode("The capital of France is", add_special_tokens=True))
    chunks = list(client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=10,
                                            stream=True, stream_options={"include_usage": True}, **greedy()))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == \
        r.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})


def test_logprobs_completions_and_chat_streamed_and_not(client, served):
    """logprobs through the official client, both endpoints, both modes, both engines: one entry per generated
    token, the top alternatives sorted (chat: top_logprobs of them; completions: the top k plus the sampled token),
    the greedy token the most likely one, and the streamed entries equal to the non-streamed ones."""
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, logprobs=3, **greedy())
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    for tok, val, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert val <= 0 and 1 <= len(top) <= 4 and top[tok] == val == max(top.values())  # greedy: the top token
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    chunks = list(client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, logprobs=3,
                                            stream=True, **greedy()))
    streamed = [v for c in chunks if c.choices and c.choices[0].logprobs for v in c.choices[0].logprobs.token_logprobs]
    assert streamed == pytest.approx(lp.token_logprobs, abs=1e-6)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text

    msgs = [{"role": "user", "content": "Say hello"}]
    c = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=5, logprobs=True, top_logprobs=2,
                                       **greedy())
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens == 5
    for item in content:
        assert [t.logprob for t in item.top_logprobs] == sorted((t.logprob for t in item.top_logprobs), reverse=True)
        assert len(item.top_logprobs) == 2 and item.top_logprobs[0].logprob == item.logprob
        assert item.bytes == list(item.token.encode("utf-8"))
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=5, logprobs=True,
                                                 stream=True, **greedy()))
    items = [i for ch in chunks if ch.choices and ch.choices[0].logprobs for i in ch.choices[0].logprobs.content]
    assert [i.logprob for i in items] == pytest.approx([i.logprob for i in content], abs=1e-6)
    assert all(i.top_logprobs == [] for i in items)  # logprobs=True without top_logprobs: the tokens only
    plain = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3, **greedy())
    assert plain.choices[0].logprobs is None


def test_n_choices_streamed_and_not(client, served):
    """n > 1: n choices indexed 0..n-1; greedy choices are identical, seeded sampled ones reproducible (seed + i
    per choice) and not all the same; streamed chunks reassemble into the non-streamed choices; usage counts the
    prompt once and every completion token; afterwards no request is left in the engine."""
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, n=3, **greedy())
    assert [c.index for c in r.choices] == [0, 1, 2] and len({c.text for c in r.choices}) == 1
    n_prompt = len(served[0].tokenizer.encode("Once upon a time", add_special_tokens=True))
    assert r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens == 15
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=8, n=4, temperature=1.0, seed=7,
              extra_body={"ignore_eos": True})
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices] and len({c.text for c in a.choices}) > 1
    texts = {}
    for ch in client.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        for c in ch.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
        if ch.usage:
            assert ch.usage.completion_tokens == 32
    assert [texts[i] for i in range(4)] == [c.text for c in a.choices]
    echoed = client.completions.create(**{**kw, "echo": True, "logprobs": 0})
    assert [c.text for c in echoed.choices] == ["Once upon a time" + c.text for c in a.choices]
    assert all(c.logprobs.token_logprobs[0] is None and len(c.logprobs.tokens) == n_prompt + 8 for c in echoed.choices)
    msgs = [{"role": "user", "content": "Tell me a story"}]
    c = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, n=2, logprobs=True, seed=3,
                                       temperature=0.9, extra_body={"ignore_eos": True})
    assert [ch.index for ch in c.choices] == [0, 1] and all(len(ch.logprobs.content) == 4 for ch in c.choices)
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, n=2, seed=3,
                                                 temperature=0.9, stream=True, extra_body={"ignore_eos": True}))
    for i in range(2):
        mine = [ch.choices[0] for ch in chunks if ch.choices and ch.choices[0].index == i]
        assert mine[0].delta.role == "assistant" and mine[-1].finish_reason == "length"
        assert "".join(m.delta.content or "" for m in mine) == c.choices[i].message.content
    assert wait_until(lambda: served[0].stats()["num_running"] == 0 and served[0].stats()["num_waiting"] == 0)


def test_penalties_and_logit_bias(client, served):
    """logit_bias +100 forces a token, -100 bans the one greedy would pick; penalties are accepted and change a
    greedy answer that repeats itself; a bias on a token outside the vocabulary is a 400."""
    tok = served[0].tokenizer
    target = tok.encode(" Paris")[0]
    r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, logit_bias={str(target): 100},
                                  **greedy())
    assert r.choices[0].text == tok.decode([target] * 4)
    base = client.completions.create(model=MODEL, prompt="Hello", max_tokens=12, logprobs=0, **greedy())
    first = base.choices[0].logprobs.tokens[0]
    ids = tok.encode(first)
    assert len(ids) == 1 and tok.decode(ids) == first  # its id, to ban it
    banned = client.completions.create(model=MODEL, prompt="Hello", max_tokens=1, logprobs=0,
                                       logit_bias={str(ids[0]): -100}, **greedy())
    assert banned.choices[0].logprobs.tokens[0] != first
    pen = client.completions.create(model=MODEL, prompt="Hello", max_tokens=12, presence_penalty=2.0,
                                    frequency_penalty=1.0, logprobs=0, **greedy())
    assert len(set(base.choices[0].logprobs.tokens)) < 12  # the plain greedy answer repeats itself ...
    assert len(set(pen.choices[0].logprobs.tokens)) > len(set(base.choices[0].logprobs.tokens))  # ... less so
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="Hello", max_tokens=2, logit_bias={str(tok.vocab_size + 5): 1})
    assert "outside the vocabulary" in str(e.value) and e.value.param == "logit_bias"  # (it named `prompt`)


def test_echo_with_logprobs_scores_the_prompt(client, served):
    """lm-eval's loglikelihood request (token ids, echo, max_tokens=1, logprobs=1, greedy): the text starts with the
    prompt, every prompt token after the first is scored given the ones before it, equal to the reference model's
    log_softmax (the same random weights, loaded here), streamed and not; echo without logprobs echoes the text."""
    import torch

    from common.model_loader import load_model

    tok = served[0].tokenizer
    ids = tok.encode("The quick brown fox jumps over the lazy", add_special_tokens=True)
    kw = dict(model=MODEL, prompt=ids, max_tokens=1, logprobs=1, echo=True, temperature=0)
    ch = client.completions.create(**kw).choices[0]
    lp = ch.logprobs
    assert ch.text.startswith(tok.decode(ids, skip_special_tokens=False))
    assert len(lp.tokens) == len(ids) + 1 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    ref_model = load_model(MODEL, random_weights=True, num_layers=2, device="cpu").model
    with torch.no_grad():
        ref = torch.log_softmax(ref_model(torch.tensor([ids]))[0].float(), -1)  # row j scores token j + 1
    assert lp.token_logprobs[1:len(ids)] == pytest.approx([ref[j - 1, ids[j]].item() for j in range(1, len(ids))],
                                                          abs=1e-4)
    assert lp.token_logprobs[-1] == pytest.approx(ref[-1].max().item(), abs=1e-4)  # the greedy continuation
    assert all(len(d) <= 2 for d in lp.top_logprobs[1:])
    chunks = list(client.completions.create(stream=True, **kw))
    streamed = [v for c in chunks if c.choices and c.choices[0].logprobs for v in c.choices[0].logprobs.token_logprobs]
    assert streamed[0] is None and streamed[1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-6)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ch.text
    plain = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=2, echo=True, **greedy())
    assert plain.choices[0].text.startswith("Hello there") and plain.choices[0].logprobs is None


def test_a_batch_of_prompts(client, served):
    """prompt = a list of prompts (strings or token ids) x n: choice index = prompt index x n + j, each choice
    equal to its prompt sent alone (greedy), usage counts each prompt once; lm-eval's batched loglikelihood shape
    (token-id prompts, echo, logprobs) included; streamed chunks reassemble per index."""
    tok = served[0].tokenizer
    texts = ["The sky is", "Once upon a time there", "1, 2, 3,"]
    alone = [client.completions.create(model=MODEL, prompt=t, max_tokens=4, **greedy()).choices[0].text
             for t in texts]
    r = client.completions.create(model=MODEL, prompt=texts, max_tokens=4, n=2, **greedy())
    assert [c.index for c in r.choices] == list(range(6))
    assert [c.text for c in r.choices] == [t for t in alone for _ in range(2)]
    n_prompt = sum(len(tok.encode(t, add_special_tokens=True)) for t in texts)
    assert r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens == 24
    ids = [tok.encode(t, add_special_tokens=True) for t in texts]
    scored = client.completions.create(model=MODEL, prompt=ids, max_tokens=1, logprobs=1, echo=True, temperature=0)
    for c, p in zip(scored.choices, ids):
        assert len(c.logprobs.token_logprobs) == len(p) + 1 and c.logprobs.token_logprobs[0] is None
        single = client.completions.create(model=MODEL, prompt=p, max_tokens=1, logprobs=1, echo=True, temperature=0)
        assert c.logprobs.token_logprobs[1:] == pytest.approx(single.choices[0].logprobs.token_logprobs[1:], abs=1e-5)
    got = {}
    for ch in client.completions.create(model=MODEL, prompt=texts, max_tokens=4, stream=True, **greedy()):
        for c in ch.choices:
            got[c.index] = got.get(c.index, "") + c.text
    assert [got[i] for i in range(3)] == alone


def test_chat_uses_the_chat_template(client, served):
    engine = served[0]
    msgs = [{"role": "user", "content": "Say hi"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, **greedy())
    assert r.usage.prompt_tokens == len(engine.tokenizer.chat_ids(msgs)) and r.usage.completion_tokens == 6
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, stream=True, **greedy()))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content


def test_stop_string_and_seed(client):
    full = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, **greedy()).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert stop.strip(), full  # random weights still make printable text
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, stop=[stop], **greedy())
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == full[:full.index(stop)]
    a, b = (client.completions.create(model=MODEL, prompt="Once", max_tokens=8, temperature=1.0, seed=7,
                                      extra_body={"ignore_eos": True}).choices[0].text for _ in range(2))
    assert a == b


def test_chat_without_max_tokens_fits_a_small_kv_pool():
    engine = AsyncEngine.from_model(MODEL, random_weights=True, num_layers=2, device="cpu", max_model_len=256,
                                    num_blocks=5)  # 80 tokens of KV: less than the 256-token context
    with BackgroundServer(create_app(engine)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=120)
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], **greedy())
        assert r.choices[0].finish_reason == "length" and r.usage.total_tokens == 80
        with pytest.raises(openai.BadRequestError) as e:  # an explicit limit over the pool is the user's to fix
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=100)
        assert "KV pool" in e.value.message and "--kv-memory" in e.value.message


def test_prompt_too_long_and_unknown_model(client, served):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="word " * 300, max_tokens=4)
    assert e.value.code == "context_length_exceeded" and "256" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1000,
                                       stream=True)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="tinyllama-1.1b", prompt="hi")
    assert e.value.code == "model_not_found"


def test_100_concurrent_streams_10pct_aborted(served):
    engine, url = served
    peak_waiting, stop = [0], threading.Event()

    def watch():  # the overload must queue (and KV exhaustion preempt), never fail
        while not stop.is_set():
            peak_waiting[0] = max(peak_waiting[0], engine.stats()["num_waiting"])
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        results = asyncio.run(run_concurrent(url, MODEL, num=100, max_tokens=28, abort_every=10,
                                                abort_max_tokens=200))
    finally:
        stop.set()
        watcher.join()
    done = [r for r in results if r is not None]
    assert len(done) == 90
    assert [u.completion_tokens for u, _ in done] == [28] * 90 and {reason for _, reason in done} == {"length"}
    assert wait_until(lambda: engine.stats()["num_free_blocks"] == NUM_BLOCKS, 10), engine.stats()
    s = engine.stats()
    assert s["num_running"] == 0 and s["num_waiting"] == 0 and s["kv_usage"] == 0
    assert peak_waiting[0] > 0 and s.get("num_preemptions", 1) > 0, (peak_waiting, s)
    m = parse_metrics(httpx.get(url + "/metrics").text)
    lab = f'{{model_name="{MODEL}"}}'
    assert m[f"titan:num_requests_running{lab}"] == 0 and m[f"titan:num_free_blocks{lab}"] == NUM_BLOCKS
    assert m['titan:request_success_total{finished_reason="abort"}'] == 10
    assert m["titan:time_to_first_token_seconds_count"] >= 100


@pytest.mark.parametrize("mixed", [False, True], ids=["decode-only-overlap", "mixed-overlap"])
def test_100_concurrent_streams_with_overlapped_decode(mixed):
    """The acceptance test again with overlapped decode forced on (it is on by default only with CUDA graphs), and
    with overlapped mixed steps (arrivals admitted while a step is in flight): the server's aborts arrive while a
    step is in flight; the 90 others still get exactly their tokens, nothing leaks."""
    engine = AsyncEngine.from_model(MODEL, random_weights=True, num_layers=2, device="cpu", max_model_len=256,
                                    num_blocks=NUM_BLOCKS, max_num_seqs=32, overlap=True, overlap_mixed=mixed)
    if engine.tokenizer is None:
        pytest.skip("the SmolLM2 tokenizer asset is missing (run `make setup`)")
    with BackgroundServer(create_app(engine)) as url:
        results = asyncio.run(run_concurrent(url, MODEL, num=100, max_tokens=28, abort_every=10,
                                                abort_max_tokens=200))
        done = [r for r in results if r is not None]
        assert len(done) == 90 and [u.completion_tokens for u, _ in done] == [28] * 90
        assert wait_until(lambda: engine.stats()["num_free_blocks"] == NUM_BLOCKS, 10), engine.stats()
        s = engine.stats()
        assert s["num_overlapped_steps"] > 0 and s["num_running"] == 0 and s["num_waiting"] == 0
        assert (engine.engine.counters["num_overlapped_mixed_steps"] > 0) == mixed


def test_chat_logprobs_bytes_of_part_of_a_character(client, served):
    """A token holding part of a character (an emoji's first two bytes) reads as U+FFFD, but its logprobs `bytes`
    are its own, as OpenAI documents them (so a client can join them into the character); they were the bytes of
    U+FFFD. Forced by logit_bias, one token."""
    tok = served[0].tokenizer
    part = tok.encode("😀")[0]
    assert tok.token_bytes(part) == "😀".encode("utf-8")[:len(tok.token_bytes(part))] != "😀".encode("utf-8")
    c = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=1,
                                       logprobs=True, logit_bias={str(part): 100}, **greedy())
    item = c.choices[0].logprobs.content[0]
    assert item.token == "\ufffd" and item.bytes == list(tok.token_bytes(part))
