"""LLMEngine.step(increments=True), what the engine process sends (engine_core.py): step for step the same tuples
as the full RequestOutputs cut down by engine_core.pack, token for token and text for text, with arrivals, aborts,
stop strings, seeded sampling, chunked prefill, preemption and overlapped decode; and the engine core uses it."""
import random

import pytest

from common.sampling import SamplingParams
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.engine_core import EngineCore, pack
from phase4_scheduler.outputs import RequestOutput
from phase4_scheduler.tests.engine_helpers import prompts


def same(a: list[tuple], b: list[tuple]) -> bool:
    """Equal increments; first_token_time (field 5) is each engine's own clock: both set, or both None."""
    cut = lambda ts: [t[:5] + ((t[5] is None),) + t[6:] for t in ts]  # noqa: E731
    return cut(a) == cut(b)


def lockstep(full: LLMEngine, inc: LLMEngine, seed: int, n: int = 10, max_steps: int = 400,
             host_logits: bool = True) -> dict:
    """Drive both engines with the same arrivals and aborts; assert equal increments at every step. Returns
    per request the text and tokens put together from the increments. `host_logits=False`: no request asks for
    logprobs (those keep an overlapping engine synchronous while they run)."""
    rng, ps = random.Random(seed), prompts(n, seed=seed)
    stops = [[], ["e"], ["th", "an"], []]
    added, got = 0, {}
    for _ in range(max_steps):
        if added < n and rng.random() < 0.5:
            sp = SamplingParams(max_tokens=rng.randrange(1, 24), ignore_eos=True, stop=stops[added % 4],
                                logprobs=(None, 0, 3)[added % 3] if added % 5 == 1 and host_logits else None,
                                prompt_logprobs=2 if added % 4 == 3 and host_logits else None,
                                **({"temperature": 0.9, "top_k": 40, "seed": added} if added % 3 == 0 else
                                   {"temperature": 0}))
            for eng in (full, inc):
                eng.add_request(f"r{added}", ps[added], sp)
            added += 1
        a = pack(full.step())
        b = inc.step(increments=True)
        assert all(type(t) is tuple for t in b)
        assert same(b, a)
        if full.requests and rng.random() < 0.05:  # an abort: both return the same final output
            rid = rng.choice(sorted(full.requests))
            fa, fb = full.abort_request(rid), inc.abort_request(rid)
            assert isinstance(fb, RequestOutput) and same(pack([fa]), pack([fb]))
            b = b + pack([fb])
        for rid, new, delta, reason, *_ in b:
            toks, text, _ = got.get(rid, ([], "", None))
            got[rid] = (toks + new, text + delta, reason)
        if added == n and not full.has_unfinished():
            break
    assert not inc.has_unfinished() and inc.kv.num_free_blocks == inc.kv.num_total_blocks
    return got


@pytest.mark.parametrize("kw", [dict(num_blocks=96, block_size=8),
                                dict(num_blocks=96, block_size=8, max_num_batched_tokens=7),  # chunked prompts
                                dict(num_blocks=9, block_size=8),  # preemption
                                dict(num_blocks=96, block_size=8, overlap=True)])  # overlapped decode
def test_increments_equal_the_full_outputs_increments(tiny, kw):
    if tiny.tokenizer is None:
        pytest.skip("the SmolLM2 tokenizer asset is missing (run `make setup`)")
    full, inc = LLMEngine(tiny, **kw), LLMEngine(tiny, **kw)
    got = lockstep(full, inc, seed=len(kw) + kw["num_blocks"])
    assert len(got) == 10 and any(text for _, text, _ in got.values())
    assert {"stop", "length", "abort"} <= {reason for *_, reason in got.values()}  # every way to end was taken
    assert inc.scheduler.num_preemptions > 0 if kw["num_blocks"] == 9 else True
    assert inc.counters["num_overlapped_steps"] > 0 if kw.get("overlap") else True
    for rid, (toks, text, reason) in got.items():  # the joined increments are the whole output
        if reason not in (None, "abort", "stop"):
            assert text == tiny.tokenizer.decode(toks)


def test_increments_equal_the_full_outputs_with_overlapped_mixed_steps(tiny):
    """The same lockstep with overlapped mixed steps (arrivals admitted and prompts chunked while a step is in
    flight), stop strings, seeded sampling and aborts; no logprobs, which would keep the engine synchronous. This
    checks the increments path under mixed overlap (no placeholder leaks, the same tuples as the full outputs);
    that the tokens are the synchronous engine's is test_overlap_mixed.py's job."""
    if tiny.tokenizer is None:
        pytest.skip("the SmolLM2 tokenizer asset is missing (run `make setup`)")
    kw = dict(num_blocks=96, block_size=8, overlap=True, overlap_mixed=True, max_num_batched_tokens=7)
    full, inc = LLMEngine(tiny, **kw), LLMEngine(tiny, **kw)
    got = lockstep(full, inc, seed=17, host_logits=False)
    assert len(got) == 10 and {"stop", "length"} <= {reason for *_, reason in got.values()}
    assert inc.counters["num_overlapped_mixed_steps"] > 0
    assert all(-1 not in toks for toks, _, _ in got.values())  # overlap.PLACEHOLDER never reaches a client


def test_without_detokenizer_and_final_only(tiny):
    full, inc = LLMEngine(tiny, num_blocks=64, detokenize=False), LLMEngine(tiny, num_blocks=64, detokenize=False)
    for eng in (full, inc):
        for i, p in enumerate(prompts(4, seed=3)):
            eng.add_request(f"q{i}", p, SamplingParams(max_tokens=3 + i, temperature=0, ignore_eos=True))
    while full.has_unfinished():
        assert same(inc.step(final_only=True, increments=True), pack(full.step(final_only=True)))
    assert not inc.has_unfinished()


def test_engine_core_asks_for_increments_where_the_step_takes_them(tiny):
    class Conn:
        def recv_bytes(self):
            raise EOFError

    assert EngineCore(LLMEngine(tiny, num_blocks=16), Conn(), None).step_kwargs == {"increments": True}

    class OldEngine:  # a step without the option gets none
        def step(self, on_forward=None):
            return []
    assert EngineCore(OldEngine(), Conn(), None).step_kwargs == {}


def test_shared_totals_output_is_the_copying_one():
    """RequestOutput.sharing (ProcessEngine's outputs): equal to one built with a copy, a snapshot of the shared list
    that later appends do not change, the same count, repr, pickling, asdict; a plain output is untouched."""
    import copy
    import dataclasses
    import pickle

    totals = [5, 6]
    args = ("r", [1, 2], [6], " b", "a b", False, None, None, 0.0, 1.5, 0)
    plain = RequestOutput("r", [1, 2], [6], [5, 6], " b", "a b", False, None, None, 0.0, 1.5, 0)
    shared = [RequestOutput.sharing(*args[:3], totals, 2, *args[3:]) for _ in range(4)]
    assert shared[0].num_output_tokens == 2 and repr(shared[0]) == repr(plain)
    assert "output_token_ids" not in shared[0].__dict__  # nothing copied until read
    totals += [7, 8]  # the stream goes on
    assert shared[0] == plain and shared[0].output_token_ids == [5, 6] and shared[0].num_output_tokens == 2
    assert shared[0].output_token_ids is shared[0].output_token_ids  # read once, then an ordinary attribute
    assert pickle.loads(pickle.dumps(shared[1])) == plain and copy.copy(shared[2]) == plain
    assert dataclasses.asdict(shared[3]) == dataclasses.asdict(plain)
    shared[3].output_token_ids.append(99)  # a consumer's own list, as with a copy
    assert totals == [5, 6, 7, 8] and RequestOutput("q", [1]).output_token_ids == []
    assert RequestOutput("q", [1]).num_output_tokens == 0 and plain.num_output_tokens == 2
