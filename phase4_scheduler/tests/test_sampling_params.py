"""SamplingParams on the engine's edges: every bad value is a ValueError naming the field, at construction or in the
engine's validate (before, some got into a step and raised there: torch.multinomial on a NaN softmax, topk(k=True),
manual_seed(2**70), ending every request of the batch); a single stop string is one stop string; temperatures too
small to divide by are greedy; top_k / top_p edge values; seeded requests draw the same tokens alone, batched with
others and under preemption."""
import math

import pytest

from common.sampling import GREEDY_TEMPERATURE, SamplingParams
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.llm import LLM
from phase4_scheduler.tests.engine_helpers import prompts

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("field, value", [
    ("max_tokens", 0), ("max_tokens", True), ("max_tokens", 2.0),
    ("temperature", -0.1), ("temperature", math.nan), ("temperature", math.inf), ("temperature", "0.5"),
    ("temperature", True),
    ("top_p", 0.0), ("top_p", 1.5), ("top_p", math.nan), ("top_p", "1"),
    ("top_k", -2), ("top_k", True), ("top_k", 2.5),
    ("seed", 2 ** 64), ("seed", -(2 ** 63) - 1), ("seed", True), ("seed", 1.5), ("seed", "7"),
    ("logprobs", 21), ("presence_penalty", 2.5), ("repetition_penalty", 0.0), ("repetition_penalty", math.inf),
    ("repetition_penalty", math.nan), ("logit_bias", {5: 101.0}),
    ("stop", [""]), ("stop", ""), ("stop", ["ok", 5]), ("stop", 5), ("stop_token_ids", 5), ("stop_token_ids", [-1]),
    ("stop_token_ids", [True]), ("stop_token_ids", "12"),
])
def test_bad_values_are_value_errors_naming_the_field(tiny, field, value):
    """At construction, or (seed, stop strings, stop token ids: validate_params) in the engine's validate."""
    with pytest.raises(ValueError, match=field if field != "stop" else "stop strings"):
        LLMEngine(tiny, num_blocks=8).validate([5], SamplingParams(**{field: value}))


def test_edge_values_that_are_valid(tiny):
    eng = LLMEngine(tiny, num_blocks=8)
    for seed in (2 ** 64 - 1, -(2 ** 63), 0):
        eng.validate([5], SamplingParams(seed=seed))
    assert SamplingParams(temperature=1e-9).temperature == 0.0 and SamplingParams(temperature=1e-9).greedy
    assert SamplingParams(temperature=GREEDY_TEMPERATURE).temperature == GREEDY_TEMPERATURE
    assert SamplingParams(top_k=-1, top_p=1.0, temperature=2).top_k == -1


def test_a_single_stop_string_is_one_stop_string(tokenizer):
    """stop="ab" (OpenAI's API takes a string or a list) was iterated as the stop strings "a" and "b": the text was
    cut at the first "a". The engine builds its detokenizer from params.stop, as here."""
    from phase4_scheduler.detokenizer import IncrementalDetokenizer

    sp = SamplingParams(stop="\n\n")
    assert sp.stop == ["\n\n"] and SamplingParams(stop=("x", "yz")).stop == ("x", "yz")
    d = IncrementalDetokenizer(tokenizer, [], sp.stop)
    for t in tokenizer.encode("one\ntwo\n\nthree"):
        if (hit := d.add_token(t)) is not None:
            break
    assert hit == "\n\n" and d.text == "one\ntwo"


@pytest.mark.parametrize("kw", [dict(temperature=1e-40), dict(temperature=1e-40, seed=3),
                                dict(temperature=1e-40, top_p=0.5, top_k=5)])
def test_tiny_temperature_is_greedy_instead_of_crashing_the_step(tiny, kw):
    """logits / 1e-40 overflow to inf and softmax(inf) is NaN: the step raised (every request of the batch lost)."""
    p = prompts(1, seed=41)[0]
    ref = LLM(engine=LLMEngine(tiny, num_blocks=16)).generate([p], GREEDY)[0].output_token_ids
    tiny_t = SamplingParams(max_tokens=6, ignore_eos=True, **kw)
    assert LLM(engine=LLMEngine(tiny, num_blocks=16)).generate([p], tiny_t)[0].output_token_ids == ref


def test_top_k_top_p_edges(tiny):
    """top_k=1 and top_p tiny are greedy at any temperature; top_k past the vocabulary and top_p=1 filter nothing
    (the same seeded draw as no filter); top_k=-1 is off. (A CPU draw over 49k tokens costs ~0.1 s: few tokens.)"""
    p = prompts(1, seed=42)[0]
    eng = LLMEngine(tiny, num_blocks=16)
    gen = lambda sp: LLM(engine=eng).generate([p], sp)[0].output_token_ids  # noqa: E731
    ref = gen(SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    assert gen(SamplingParams(max_tokens=4, temperature=1.7, top_k=1, seed=1, ignore_eos=True)) == ref
    assert gen(SamplingParams(max_tokens=4, temperature=1.7, top_p=1e-6, seed=1, ignore_eos=True)) == ref
    free = gen(SamplingParams(max_tokens=4, temperature=1.3, seed=5, ignore_eos=True))
    assert free != ref  # a real draw (else the equalities below prove nothing)
    for kw in (dict(top_k=10 ** 6), dict(top_k=-1), dict(top_p=1.0)):
        assert gen(SamplingParams(max_tokens=4, temperature=1.3, seed=5, ignore_eos=True, **kw)) == free, kw


def test_seeded_request_same_tokens_alone_batched_and_preempted(tiny):
    """A seeded request's tokens depend on its seed and prompt only: alone, batched with other seeded, unseeded and
    greedy requests in another order, with its prompt chunked, and under a KV pool small enough to preempt and
    recompute it."""
    ps = prompts(4, seed=43, lo=8, hi=20)
    target = SamplingParams(max_tokens=5, temperature=1.1, top_k=40, top_p=0.95, seed=1234, ignore_eos=True)
    alone = LLM(engine=LLMEngine(tiny, num_blocks=64, block_size=4)).generate([ps[0]], target)[0].output_token_ids
    others = [SamplingParams(max_tokens=5, temperature=0.9, seed=1, ignore_eos=True),
              SamplingParams(max_tokens=5, temperature=0.8, ignore_eos=True), GREEDY]
    for order, kw in (([0, 1, 2, 3], {}), ([3, 2, 1, 0], dict(num_blocks=7)),
                      ([2, 0, 1, 3], dict(max_num_batched_tokens=5))):
        eng = LLMEngine(tiny, block_size=4, **{"num_blocks": 64, **kw})
        params = [target if i == 0 else others[i - 1] for i in order]
        outs = LLM(engine=eng).generate([ps[i] for i in order], params)
        assert outs[order.index(0)].output_token_ids == alone, (order, kw)
        if kw.get("num_blocks") == 7:
            assert eng.scheduler.num_preemptions > 0
