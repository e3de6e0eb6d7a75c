"""The server path's cheap parts give the same bytes / numbers as the plain ones: pre-rendered SSE chunks, the Rust
decode, O(1) histogram observations, output lists for consumers that fall behind; and the benchmark runs."""
import asyncio
import json
import random

import pytest

from common.sampling import SamplingParams
from phase4_scheduler import bench_server_overhead
from phase4_scheduler import protocol as P
from phase4_scheduler.async_engine import AsyncEngine
from phase4_scheduler.detokenizer import IncrementalDetokenizer, fast_decoder
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.metrics import Histogram
from phase4_scheduler.sse import ChunkTemplate, sse
from phase4_scheduler.tests.fake_engine import ByteTokenizer

AWKWARD = ["", " word", 'quote " and \\ backslash', "new\nline\ttab\r", "\x00\x01\x1f control", "café 你好 🎉",
           "\u2028\u2029 separators", "</script>", "\ud7ff\ue000"]


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("usage", [False, True])
def test_chunk_template_is_byte_identical_to_the_dict_path(chat, usage):
    extra = {"usage": None} if usage else {}
    rid, model = P.new_id("chatcmpl" if chat else "cmpl"), 'my "model"/ü'
    if chat:
        make = lambda t: {**P.chat_chunk(rid, model, 1700000000, {"content": t}, None), **extra}  # noqa: E731
    else:
        make = lambda t: {**P.completion_chunk(rid, model, 1700000000, t, None), **extra}  # noqa: E731
    tmpl = ChunkTemplate(make)
    for text in AWKWARD + ["".join(chr(random.Random(i).randrange(32, 0x3000)) for _ in range(20)) for i in range(50)]:
        assert tmpl(text) == sse(make(text)), text
        assert json.loads(tmpl(text)[len(b"data: "):]) == make(text)


def test_chunk_template_refuses_a_payload_without_the_text():
    with pytest.raises(ValueError, match="exactly once"):
        ChunkTemplate(lambda t: {"fixed": 1})
    with pytest.raises(ValueError, match="exactly once"):
        ChunkTemplate(lambda t: {"a": t, "b": t})


def test_fast_decoder_matches_the_tokenizer(tokenizer):
    rng = random.Random(0)
    for skip in (True, False):
        dec = fast_decoder(tokenizer, skip)
        assert fast_decoder(tokenizer, skip) is dec  # cached per tokenizer
        for _ in range(200):
            ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 8))]
            assert dec(ids) == tokenizer.decode(ids, skip_special_tokens=skip)
    assert fast_decoder(tokenizer) is not fast_decoder(tokenizer, False)


def test_fast_decoder_falls_back_to_decode_without_a_backend():
    tok = ByteTokenizer()
    dec = fast_decoder(tok)
    assert dec([104, 105]) == tok.decode([104, 105]) == "hi"
    d = IncrementalDetokenizer(tok, [1, 2], ["i"])
    assert d.add_token(104) is None and d.add_token(105) == "i" and d.text == "h"


def test_histogram_observe_n_equals_n_observations():
    a, b = Histogram("a", "x"), Histogram("b", "x")
    for v, n in [(0.0004, 3), (0.003, 1), (0.07, 5), (100.0, 2), (0.01, 0)]:
        a.observe_n(v, n)
        for _ in range(n):
            b.observe(v)
    assert a.counts == b.counts and a.count == 11 and a.sum == pytest.approx(b.sum)
    assert a.render()[2:] == [line.replace("titan:b", "titan:a") for line in b.render()[2:]]


def test_generate_batches_hands_a_slow_consumer_everything_at_once(tiny):
    """A consumer that sleeps through several steps gets their outputs in one list, in order, nothing lost."""
    async def main():
        engine = AsyncEngine(LLMEngine(tiny, num_blocks=40, block_size=8), model_name="tiny")
        await engine.start()
        params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
        sizes, ids = [], []
        async for batch in engine.generate_batches([5, 6, 7], params, "slow"):
            sizes.append(len(batch))
            for out in batch:
                assert len(out.output_token_ids) == len(ids) + len(out.new_token_ids)
                ids += out.new_token_ids
            await asyncio.sleep(0.05)  # several steps go by
        fast = [o async for o in engine.generate([5, 6, 7], params, "fast")]
        stats = engine.stats()
        await engine.shutdown()
        return sizes, ids, batch[-1], fast, stats

    sizes, ids, last, fast, stats = asyncio.run(main())
    assert max(sizes) > 1 and sum(sizes) <= 30 and len(ids) == 30
    assert last.finished and last.finish_reason == "length" and last.output_token_ids == ids
    assert fast[-1].output_token_ids == ids  # greedy: the same tokens either way
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


def test_bench_server_overhead_toy_run(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("TITAN_RESULTS_DIR", str(tmp_path))
    out = bench_server_overhead.main(["--streams", "4", "--steps", "12", "--gpu-ms", "0", "1", "--repeats", "1",
                                      "--name", "toy", "--compare", "none"])
    assert (tmp_path / "toy.json").exists() and [(r["streams"], r["gpu_ms"]) for r in out["rows"]] == [(4, 0), (4, 1)]
    for r in out["rows"]:
        assert r["delivered_step_ms"] > 0 and r["engine_ms"] > 0 and r["steady_steps"] >= 5
    assert out["rows"][1]["engine_ms"] >= 1.0  # the simulated device time is inside the step


def test_bench_server_overhead_toy_run_with_the_engine_process(tmp_path, monkeypatch, tokenizer):
    """`--engine-process both`: the same stubbed engine built in the engine process, runs alternating with the
    in-process engine; the step clock comes back from there and the CPU figures count both processes."""
    monkeypatch.setenv("TITAN_RESULTS_DIR", str(tmp_path))
    out = bench_server_overhead.main(["--streams", "4", "--steps", "12", "--gpu-ms", "1", "--repeats", "1", "--hook",
                                      "--engine-process", "both", "--name", "toy", "--compare", "none"])
    thread, process = out["rows"]
    assert (thread["engine_process"], process["engine_process"]) == (False, True)
    for r in out["rows"]:
        assert r["delivered_step_ms"] > 0 and r["steady_steps"] >= 5 and r["engine_ms"] >= 1.0
    assert process["front_cpu_ms"] > 0 and process["cpu_ms"] == process["cpu_ms_mean"] > process["front_cpu_ms"]
