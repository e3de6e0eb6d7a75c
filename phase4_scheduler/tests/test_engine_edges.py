"""The engine at its edges (tiny random Llama): chunked prefill off, aborts at each point of a request's life, prompts
at the context's end, and a seeded fuzz of the synchronous engine against overlapped decode (decode-only and mixed)
with stop strings, stop tokens, seeded sampling, aborts and a pool small enough to preempt."""
import random

import pytest

from common.sampling import SamplingParams
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.llm import LLM
from phase4_scheduler.overlap import PLACEHOLDER
from phase4_scheduler.request import RequestStatus
from phase4_scheduler.tests.engine_helpers import prompts

GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)


def drained(eng) -> bool:
    eng.kv.check_mirror()
    return eng.kv.num_free_blocks == eng.kv.num_total_blocks and eng.kv.tables.num_sequences == 0


def test_without_chunked_prefill_a_budget_below_the_context_is_refused(tiny):
    """Unchunked, a prompt longer than the step budget (or a preempted request's recompute, prompt + outputs) was
    never admitted: step() returned nothing forever and LLM.generate hung. Now the engine refuses to be built so."""
    with pytest.raises(ValueError, match="chunked prefill"):
        LLMEngine(tiny, num_blocks=16, max_model_len=64, max_num_batched_tokens=16, enable_chunked_prefill=False)
    # budget = max_model_len - 1: prompts and recomputes after preemption fit one step, every request finishes
    ps = prompts(3, seed=61, lo=10, hi=12)
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    ref = [o.output_token_ids for o in LLM(engine=LLMEngine(tiny, num_blocks=64, block_size=4)).generate(ps, params)]
    eng = LLMEngine(tiny, num_blocks=9, block_size=4, max_model_len=24, max_num_batched_tokens=23,
                    enable_chunked_prefill=False)
    assert [o.output_token_ids for o in LLM(engine=eng).generate(ps, params)] == ref
    assert eng.scheduler.num_preemptions > 0 and drained(eng)


def step_until(eng, cond, limit=200):
    outs = []
    for _ in range(limit):
        if cond():
            return outs
        outs += eng.step()
    raise AssertionError("state never reached")


LIFECYCLE = ["waiting", "mid_prefill_chunk", "decoding", "preempted", "in_flight_decode", "in_flight_mixed"]


@pytest.mark.parametrize("point", LIFECYCLE)
def test_abort_at_every_point_of_a_request_frees_everything(tiny, point):
    """Abort the victim request at one point of its life; its final output is an abort with no placeholder, every
    block and allocator sequence comes back, and the other requests get the tokens they get without the victim."""
    ps = prompts(4, seed=62, lo=18, hi=24)
    kw = dict(num_blocks=64, block_size=4, max_num_batched_tokens=10)
    if point == "preempted":
        kw["num_blocks"] = 16  # 64 slots for 4 x (~21 + 8): someone is preempted
    if point.startswith("in_flight"):
        kw.update(overlap=True, overlap_mixed=point == "in_flight_mixed")
    eng = LLMEngine(tiny, **kw)
    for i, p in enumerate(ps):
        eng.add_request(f"a{i}", p, GREEDY)
    v = 2 if point == "preempted" else 3  # (the pool of 16 blocks preempts a2, the newest running one)
    victim = eng.requests[f"a{v}"]
    outs = step_until(eng, {
        "waiting": lambda: True,
        "mid_prefill_chunk": lambda: 0 < victim.num_computed_tokens < len(victim.prompt_token_ids),
        "decoding": lambda: victim.status is RequestStatus.RUNNING and victim.num_output_tokens >= 2,
        "preempted": lambda: victim.num_preemptions > 0 and victim.status is RequestStatus.PREEMPTED,
        "in_flight_decode": lambda: victim.num_pending_tokens > 0 and eng.counters["num_overlapped_steps"] > 0,
        "in_flight_mixed": lambda: victim.num_pending_tokens > 0 and eng.counters["num_overlapped_mixed_steps"] > 0,
    }[point])
    if point == "preempted":  # make sure the victim is the one sitting preempted in the queue
        assert victim in eng.scheduler.waiting
    final = eng.abort_request(f"a{v}")
    assert final.finished and final.finish_reason == "abort" and PLACEHOLDER not in final.output_token_ids
    assert final.output_token_ids == victim.output_token_ids and eng.abort_request(f"a{v}") is None
    while eng.has_unfinished():
        outs += eng.step()
    assert drained(eng)
    got = {o.request_id: o.output_token_ids for o in outs if o.finished}
    rest = [i for i in range(4) if i != v]
    ref = LLM(engine=LLMEngine(tiny, num_blocks=64, block_size=4)).generate([ps[i] for i in rest], GREEDY)
    assert [got[f"a{i}"] for i in rest] == [o.output_token_ids for o in ref]


@pytest.mark.parametrize("kw", [dict(), dict(overlap=True), dict(overlap=True, overlap_mixed=True)])
def test_prompts_at_the_end_of_the_context(tiny, kw):
    """prompt + max_tokens == max_model_len (the overlapped engine computes one token past a finished request:
    still inside the context and the block table); one token more is refused; nothing leaks."""
    L = 40
    eng = LLMEngine(tiny, max_model_len=L, num_blocks=10, block_size=4, max_num_batched_tokens=16, **kw)
    ps = [[5 + i for i in range(L - m)] for m in (1, 2, 6)]
    outs = LLM(engine=eng).generate(ps, [SamplingParams(max_tokens=m, temperature=0, ignore_eos=True)
                                         for m in (1, 2, 6)])
    assert [len(o.output_token_ids) for o in outs] == [1, 2, 6] and drained(eng)
    from common.errors import PromptTooLongError
    with pytest.raises(PromptTooLongError):
        eng.add_request("x", [5] * (L - 1), SamplingParams(max_tokens=2))
    with pytest.raises(PromptTooLongError):
        eng.add_request("y", [5] * L, SamplingParams(max_tokens=1))


def fuzz_workload(seed: int, n: int, tokenizer):
    rng = random.Random(seed)
    reqs = []
    for i, p in enumerate(prompts(n, seed=seed, lo=1, hi=28)):
        kw = dict(max_tokens=rng.randrange(1, 12), temperature=0, ignore_eos=rng.random() < 0.8)
        if i % 4 == 1:  # a few sampled rows (a CPU draw over 49k tokens costs ~0.1 s)
            kw.update(temperature=rng.choice([0.7, 1.2]), top_k=rng.choice([0, 1, 50]), top_p=rng.choice([1.0, 0.8]),
                      seed=rng.randrange(100))
        if tokenizer is not None and rng.random() < 0.4:
            kw["stop"] = [rng.choice(["e", "th", "an", " a", "ing"])]
        if rng.random() < 0.2:
            kw["stop_token_ids"] = [rng.randrange(49152)]
        reqs.append((f"f{i}", p, SamplingParams(**kw), rng.randrange(0, 2 * n)))
    aborts = [(f"f{rng.randrange(n)}", rng.randrange(0, 3 * n)) for _ in range(2)]
    return reqs, aborts


def drive(eng, reqs, aborts):
    """Arrivals and aborts at fixed steps; checks after every step: deltas join to the totals, no placeholder."""
    final, joined, pending = {}, {}, sorted(reqs, key=lambda r: r[3])
    for step in range(2000):
        while pending and pending[0][3] <= step:
            rid, p, sp, _ = pending.pop(0)
            eng.add_request(rid, p, sp)
        outs = eng.step()
        for rid, at in aborts:
            if at == step and (o := eng.abort_request(rid)) is not None:
                outs.append(o)
        for o in outs:
            assert PLACEHOLDER not in o.output_token_ids
            toks, text = joined.get(o.request_id, ([], ""))
            joined[o.request_id] = (toks + o.new_token_ids, text + o.text_delta)
            assert joined[o.request_id] == (o.output_token_ids, o.text)
            if o.finished:
                final[o.request_id] = (o.output_token_ids, o.finish_reason, o.stop_reason, o.text)
        if not pending and not eng.has_unfinished():
            assert drained(eng)
            return final
    raise AssertionError("the workload did not finish")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fuzz_overlapped_engines_equal_the_synchronous_one(tiny, seed):
    """Same arrivals, stop strings / stop tokens / seeded sampling, a pool that may preempt: the overlapped engines
    finish every request exactly as the synchronous one (tokens, reason, stop, text). Aborts land a step later
    there (a step's outputs come one call later), so an aborted request's tokens are a prefix of its unaborted run."""
    rng = random.Random(100 + seed)
    cfg = dict(num_blocks=rng.choice([14, 24]), block_size=rng.choice([2, 4]), max_num_seqs=rng.choice([3, 8]),
               max_num_batched_tokens=rng.choice([6, 32]))
    reqs, aborts = fuzz_workload(seed, 8, tiny.tokenizer)
    full = drive(LLMEngine(tiny, overlap=False, **cfg), reqs, [])
    for kw in (dict(overlap=False), dict(overlap=True), dict(overlap=True, overlap_mixed=True)):
        got = drive(LLMEngine(tiny, **kw, **cfg), reqs, aborts)
        assert set(got) == set(full), kw
        for rid, (toks, reason, *rest) in got.items():
            if reason == "abort":
                assert full[rid][0][:len(toks)] == toks, (kw, rid)
            else:
                assert (toks, reason, *rest) == full[rid], (kw, rid)
        assert any(r == "abort" for _, r, *_ in got.values()), kw  # the seeds are picked so that an abort lands
