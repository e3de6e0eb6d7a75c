"""Overlapped MIXED steps (overlap.py's NOTE on mixed steps, `LLMEngine(overlap_mixed=True)`) on the CPU: the engine
that launches step N+1 -- admissions and prompt chunks included -- before resolving step N gives the synchronous
engine's tokens, stops and streamed deltas, frees every block, never preempts after a launch (the engine raises if
it would), and keeps requests that need host-side logits (logprobs) synchronous."""
import random

import pytest
import torch

from common.sampling import SamplingParams
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.llm import LLM
from phase4_scheduler.kv_manager import KVCacheManager
from phase4_scheduler.overlap import PLACEHOLDER, blocks_bound, blocks_needed
from phase4_scheduler.scheduler import Scheduler
from phase4_scheduler.tests.engine_helpers import prompts
from phase4_scheduler.tests.test_overlap import drive_and_check_no_leaks, stream, tiny_cuda_loaded
from phase4_scheduler.tests.test_scheduler import req, run_step


def trio(tiny, **kw):
    """(synchronous, decode-only overlap, mixed overlap) engines on the same pool."""
    kw = {"num_blocks": 96, "block_size": 8, **kw}
    return (LLMEngine(tiny, overlap=False, **kw), LLMEngine(tiny, overlap=True, overlap_mixed=False, **kw),
            LLMEngine(tiny, overlap=True, overlap_mixed=True, **kw))


def test_mixed_overlap_runs_ahead_through_admissions_and_chunks_with_the_sync_tokens(tiny):
    """More prompts than seats (admissions while others decode) and a 16-token budget (prompts of 20-39 tokens are
    chunked): the mixed engine runs ahead through steps that admit and chunk; the decode-only one cannot."""
    reqs = [(p, SamplingParams(max_tokens=m, temperature=0, ignore_eos=True))
            for p, m in zip(prompts(9, seed=31, lo=20), (3, 11, 6, 1, 14, 8, 2, 9, 5))]
    sync, dec, mix = trio(tiny, max_num_seqs=4, max_num_batched_tokens=16, admit_min_free_seats=1)
    (d_sync, f_sync), (d_dec, f_dec), (d_mix, f_mix) = (stream(e, reqs) for e in (sync, dec, mix))
    toks = {k: o.output_token_ids for k, o in f_sync.items()}
    assert {k: o.output_token_ids for k, o in f_mix.items()} == toks == {k: o.output_token_ids for k, o in f_dec.items()}
    assert d_mix == d_sync
    assert all(len(toks[f"r{i}"]) == sp.max_tokens for i, (_, sp) in enumerate(reqs))
    assert mix.counters["num_overlapped_mixed_steps"] >= 5 and dec.counters["num_overlapped_mixed_steps"] == 0
    assert mix.counters["num_overlapped_steps"] > dec.counters["num_overlapped_steps"]
    assert sync.counters["num_overlapped_steps"] == 0


def test_mixed_overlap_arrivals_aborts_and_no_leaks(tiny):
    """Requests arrive and are aborted while mixed steps are in flight: exact token counts, no placeholder ever
    reaches an output, every block and sequence freed."""
    eng = LLMEngine(tiny, overlap=True, overlap_mixed=True, num_blocks=96, block_size=8, max_num_batched_tokens=24)
    drive_and_check_no_leaks(eng, prompts(16, seed=32, hi=30), random.Random(6), p_add=0.35, p_abort=0.06,
                             max_new=14, max_steps=800)
    assert eng.counters["num_overlapped_mixed_steps"] > 0


def test_mixed_overlap_under_kv_pressure_never_preempts_after_a_launch(tiny):
    """A pool too small for every request: the mixed engine runs ahead only while the free blocks cover every
    running request's next allocation, so schedule() never preempts after a launch (_launch would raise), and the
    tokens stay the synchronous engine's."""
    ps = prompts(6, seed=33, lo=10, hi=30)
    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    outs = []
    for eng in trio(tiny, num_blocks=24, block_size=4, max_num_batched_tokens=32)[::2]:
        outs.append([o.output_token_ids for o in LLM(engine=eng).generate(ps, greedy)])
        assert eng.kv.num_free_blocks == eng.kv.num_total_blocks
    assert outs[0] == outs[1] and eng.scheduler.num_preemptions > 0 and eng.counters["num_overlapped_steps"] > 0


def test_blocks_needed_counts_each_running_requests_next_allocation(tiny):
    """blocks_needed = the blocks the running requests' part of the next schedule() allocates at most: a prompt's
    next chunk (capped by the step budget), nothing when it fits the blocks held, one block for a decode token that
    starts a new block."""
    eng = LLMEngine(tiny, overlap=True, overlap_mixed=True, num_blocks=64, block_size=4, max_num_batched_tokens=8)
    eng.add_request("a", list(range(3, 23)), SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))  # 20
    plan = eng.scheduler.schedule()  # the first 8-token chunk: 2 blocks
    req = plan.scheduled[0][0]
    assert [n for _, n in plan.scheduled] == [8]
    req.num_computed_tokens += 8
    assert blocks_needed(eng.scheduler) == 2  # the next chunk: 8 more tokens (budget 8 of the 12 missing)
    assert eng.kv.try_allocate("a", 10)
    req.num_computed_tokens += 10  # 18 of 20 cached, 5 blocks held (room for 20)
    assert blocks_needed(eng.scheduler) == 0  # the last 2 prompt tokens fit
    assert eng.kv.try_allocate("a", 2)
    req.num_computed_tokens += 2
    req.output_token_ids.append(7)  # its first sampled token: the 21st, a new block
    assert blocks_needed(eng.scheduler) == 1


def test_blocks_bound_covers_every_schedule_of_the_running_requests():
    """blocks_bound (can_run_ahead's O(1) test before it counts): on random states -- prompts mid-chunk, decodes at
    and off block boundaries, block sizes 1-16, budgets 1-64 -- one schedule() never preempts with that many blocks
    free and gives the running requests at most that many new blocks; decodes all at a block boundary reach the
    request count, so a bound without the per-request term fails here."""
    rng = random.Random(11)
    tight = 0
    for _ in range(300):
        bs, budget = rng.choice([1, 2, 4, 16]), rng.randint(1, 64)
        kv = KVCacheManager(100_000, bs)
        s = Scheduler(kv, max_num_seqs=64, max_num_batched_tokens=budget)
        for i in range(rng.randint(1, 24)):
            s.add(req(f"r{i}", rng.choice([bs, 2 * bs, rng.randint(1, 90)]), max_tokens=rng.randint(1, 40)))
        for _ in range(rng.randint(0, 40)):
            run_step(s)
        s.waiting.clear()  # admissions are not the running requests' part
        running = list(s.running)
        if not running:
            continue
        held = {r.request_id: len(kv.block_table(r.request_id)) for r in running}
        bound = blocks_bound(len(running), budget, bs)
        plan = s.schedule()
        assert not plan.preempted
        grown = sum(len(kv.block_table(r.request_id)) - held[r.request_id] for r in running)
        assert grown <= bound, (bs, budget, len(running), grown, bound)
        tight += grown >= bound - -(-budget // bs)
    assert tight > 0  # some states reached the per-request term


def test_a_logprobs_request_keeps_mixed_steps_synchronous(tiny):
    """A request that needs host-side logits (logprobs) arriving while steps run ahead: the engine drains and steps
    synchronously while it is unfinished; its logprobs are there and everyone's tokens equal the sync engine's."""
    ps = prompts(5, seed=34, lo=5, hi=20)
    params = [SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)] * 4 + [
        SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=2)]
    results = []
    for eng in trio(tiny, max_num_seqs=8)[::2]:
        d, f = stream(eng, list(zip(ps, params)))
        results.append({k: (o.output_token_ids, len(o.logprobs or [])) for k, o in f.items()})
    assert results[0] == results[1] and results[1]["r4"][1] == 8


def test_runner_scatters_the_previous_tokens_into_a_mixed_step(tiny):
    """execute(token_src=(tokens, rows, positions)): the host's ids with tokens[rows] written at those positions
    on the device give the logits of the same ids all from the host; mismatched rows / positions are refused."""
    eng = LLMEngine(tiny, num_blocks=16, block_size=4)
    kv_args = ([0, 1, 2, 3], [4], [4], [[1]], [4, 5, 6, 7])  # one 4-token prompt: positions, q_lens, lens, table, slots
    ids = [11, 12, 13, 14]
    ref = eng.runner.execute(ids, *kv_args)
    prev = torch.tensor([99, 13, 7])
    out = eng.runner.execute([11, 12, PLACEHOLDER, 14], *kv_args,
                             token_src=(prev, torch.tensor([1]), torch.tensor([2])))
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="differ in shape"):
        eng.runner.execute(ids, *kv_args, token_src=(prev, torch.tensor([1, 2]), torch.tensor([2])))


def test_overlap_mixed_defaults_on_and_follows_the_environment(tiny, monkeypatch):
    monkeypatch.delenv("TITAN_OVERLAP_MIXED", raising=False)
    assert LLMEngine(tiny, overlap=True, num_blocks=8).overlap_mixed
    for off in ("0", "off"):
        monkeypatch.setenv("TITAN_OVERLAP_MIXED", off)
        assert not LLMEngine(tiny, overlap=True, num_blocks=8).overlap_mixed
    assert LLMEngine(tiny, overlap=True, num_blocks=8, overlap_mixed=True).overlap_mixed
    monkeypatch.setenv("TITAN_OVERLAP_MIXED", "1")
    assert LLMEngine(tiny, overlap=True, num_blocks=8).overlap_mixed
    assert not LLMEngine(tiny, overlap=False, num_blocks=8).overlap_mixed  # needs overlapped decode itself


@pytest.mark.gpu
@pytest.mark.parametrize("fuse", [False, True], ids=["eager-mixed", "fused-mixed-graphs"])
def test_gpu_mixed_overlap_with_cuda_graphs_matches_sync(fuse):
    """On the GPU, fp32: CUDA graphs (+ the fused model's piecewise mixed-step graphs) with mixed overlap give the
    synchronous engine's tokens, with admissions and prompt chunks run ahead."""
    loaded = tiny_cuda_loaded()
    reqs = [(p, SamplingParams(max_tokens=m, temperature=0, ignore_eos=True))
            for p, m in zip(prompts(12, seed=35, lo=20), (1, 3, 8, 17, 30, 5, 12, 2, 25, 9, 14, 6))]
    kw = {"num_blocks": 128, "block_size": 16, "max_num_seqs": 4, "max_num_batched_tokens": 32, "cuda_graph": True,
          "detokenize": False, "fuse": fuse, "admit_min_free_seats": 1}
    mix, off = LLMEngine(loaded, overlap_mixed=True, **kw), LLMEngine(loaded, overlap=False, **kw)
    assert mix.overlap_mixed
    (d_mix, f_mix), (d_off, f_off) = stream(mix, reqs), stream(off, reqs)
    assert {k: o.output_token_ids for k, o in f_mix.items()} == {k: o.output_token_ids for k, o in f_off.items()}
    assert d_mix == d_off and mix.counters["num_overlapped_mixed_steps"] > 5
