"""The step's fast paths compute what the plain per-request code computed: the KV mirror matches phase 1's allocator,
the vectorised runner inputs match a from-scratch reference, tensors and lists give the same tokens, batched
finishing / grouped sampling / final-only outputs / detokenize=False behave, and the overhead bench runs."""
import random

import numpy as np
import pytest
import torch

from common.sampling import SamplingParams
from phase4_scheduler import bench_step_overhead
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.kv_manager import KVCacheManager
from phase4_scheduler.llm import LLM

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


def prompts(n, seed=0, lo=3, hi=40):
    rng = random.Random(seed)
    return [[rng.randrange(3, 49152) for _ in range(rng.randrange(lo, hi))] for _ in range(n)]


def reference_inputs(eng, plan):
    """The runner's inputs rebuilt the slow way: per-request lists, block ids read from the allocator itself."""
    kv, bs = eng.kv, eng.kv.block_size
    ids, pos, q, lens, tables, slots = [], [], [], [], [], []
    for req, n in plan.scheduled:
        c = req.num_computed_tokens
        blocks = list(kv.tables.block_table(kv._seq_ids[req.request_id]))
        ids += req.all_token_ids[c:c + n]
        pos += range(c, c + n)
        q.append(n)
        lens.append(c + n)
        tables.append(blocks)
        slots += [blocks[p // bs] * bs + p % bs for p in range(c, c + n)]
    width = max(map(len, tables))
    return ids, pos, q, lens, [t + [0] * (width - len(t)) for t in tables], slots


class RecordingRunner:
    """Wraps runner.execute: checks the engine's inputs against reference_inputs, then runs the real forward."""

    def __init__(self, eng):
        self.eng, self.inner, self.calls, self.decode_only = eng, eng.runner.execute, 0, 0
        self.plan = None
        orig = eng.scheduler.schedule

        def schedule():
            self.plan = orig()
            return self.plan
        eng.scheduler.schedule = schedule

    def __call__(self, *args):
        want = reference_inputs(self.eng, self.plan)
        names = ["token_ids", "positions", "q_lens", "seq_lens", "block_tables", "slot_mapping"]
        for name, got, ref in zip(names, args, want):
            if self.eng.runner_tensors:
                assert isinstance(got, torch.Tensor) and got.device.type == "cpu", name
                assert got.dim() == (2 if name == "block_tables" else 1), name
                assert got.dtype == (torch.int32 if name in ("q_lens", "seq_lens", "block_tables") else torch.int64)
                got = got.tolist()
            assert got == ref, f"{name}: {got} != {ref}"
        self.eng.kv.check_mirror()
        self.calls += 1
        self.decode_only += self.plan.decode_only
        return self.inner(*args)


@pytest.mark.parametrize("tensors", [True, False], ids=["tensors", "lists"])
def test_inputs_match_reference_under_chunking_and_preemption(tiny, tensors):
    """7 blocks of 8 for 6 requests of up to 51 tokens, 7-token budget: chunked prefill, preemption, recompute."""
    eng = LLMEngine(tiny, num_blocks=7, block_size=8, max_num_batched_tokens=7, runner_tensors=tensors)
    rec = eng.runner.execute = RecordingRunner(eng)
    outs = LLM(engine=eng).generate(prompts(6), GREEDY)
    assert rec.calls > 20 and rec.decode_only > 0 and eng.scheduler.num_preemptions > 0
    assert all(o.num_output_tokens == GREEDY.max_tokens for o in outs)
    assert eng.kv.num_free_blocks == eng.kv.num_total_blocks and not eng.kv.rows


def test_tensor_and_list_inputs_give_identical_tokens(tiny):
    ps = prompts(8, seed=4)
    runs = [[o.output_token_ids for o in LLM(engine=LLMEngine(tiny, num_blocks=64, max_num_batched_tokens=40,
                                                              runner_tensors=t)).generate(ps, GREEDY)]
            for t in (True, False)]
    assert runs[0] == runs[1]


def test_kv_mirror_rows_are_reused_and_zeroed():
    kv = KVCacheManager(num_blocks=20, block_size=4)
    for rid, n in (("a", 9), ("b", 3), ("c", 17)):
        assert kv.try_allocate(rid, n)
    kv.check_mirror()
    assert kv.table_buf.shape[1] >= 5  # "c" holds 5 blocks: the buffer grew
    row_b = kv.rows["b"]
    assert kv.free("b") == 1 and not kv.table_buf[row_b].any()
    assert kv.try_allocate("d", 6) and kv.rows["d"] == row_b  # the freed row is reused, zero-padded
    for _ in range(6):  # decodes inside held blocks need no allocator call, then one new block
        assert kv.try_allocate("d", 1)
    kv.check_mirror()
    assert len(kv.block_table("d")) == 3 and kv.num_tokens("d") == 12
    assert not kv.try_allocate("a", 4 * kv.num_free_blocks + 4)  # too many: refused, nothing changes
    kv.check_mirror()
    rows = np.array([kv.rows["a"], kv.rows["d"]])
    assert kv.block_tables(rows, 3).tolist() == [kv.block_table("a"), kv.block_table("d")]
    assert kv.slots(rows, np.array([8, 11])).tolist() == [kv.block_table("a")[2] * 4, kv.block_table("d")[2] * 4 + 3]


def test_many_requests_finishing_in_one_step_free_everything(tiny_no_tok):
    eng = LLMEngine(tiny_no_tok, num_blocks=128, block_size=4, max_num_seqs=32, max_num_batched_tokens=4096)
    for i, p in enumerate(prompts(32, seed=7, hi=12)):
        eng.add_request(f"r{i}", p, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    finished_per_step = []
    while eng.has_unfinished():
        finished_per_step.append(sum(o.finished for o in eng.step()))
    assert finished_per_step[-1] == 32 and len(finished_per_step) == 5  # all 32 end together, in the 5th step
    assert not eng.scheduler.running and eng.kv.num_free_blocks == eng.kv.num_total_blocks


def test_final_only_step_returns_only_finished_outputs_with_the_same_tokens(tiny):
    ps = prompts(5, seed=8)
    params = [SamplingParams(max_tokens=m, temperature=0, ignore_eos=True) for m in (3, 9, 5, 9, 1)]
    streamed, final = {}, {}
    for mode, sink in ((False, streamed), (True, final)):
        eng = LLMEngine(tiny, num_blocks=64)
        for i, (p, sp) in enumerate(zip(ps, params)):
            eng.add_request(f"r{i}", p, sp)
        while eng.has_unfinished():
            for o in eng.step(final_only=mode):
                assert o.finished or not mode
                if o.finished:
                    sink[o.request_id] = o
    assert {k: (o.output_token_ids, o.text) for k, o in streamed.items()} == \
           {k: (o.output_token_ids, o.text) for k, o in final.items()}
    assert all(o.new_token_ids == o.output_token_ids for o in final.values())  # the first output carries all


def test_detokenize_off_gives_ids_only_and_refuses_stop_strings(tiny):
    eng = LLMEngine(tiny, num_blocks=64, detokenize=False)
    out = LLM(engine=eng).generate(prompts(2, seed=9), GREEDY)
    on = LLM(engine=LLMEngine(tiny, num_blocks=64)).generate(prompts(2, seed=9), GREEDY)
    assert [o.output_token_ids for o in out] == [o.output_token_ids for o in on]
    assert all(o.text == "" for o in out)
    if tiny.tokenizer is not None:
        assert any(o.text for o in on)
    with pytest.raises(ValueError, match="detokeni"):
        eng.add_request("s", [5, 6, 7], SamplingParams(max_tokens=3, stop=["x"]))


def test_sampler_groups_unseeded_rows_and_keeps_greedy_rows_exact(tiny_no_tok):
    """Greedy rows mixed with two groups of unseeded sampled rows: greedy tokens are the argmax, sampled ones are
    valid ids, and a top_k=1 group (a sampled row that must equal the argmax) proves rows are not mixed up."""
    from phase4_scheduler.request import Request
    from phase4_scheduler.sampler import Sampler

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 100, generator=g)  # [B, V]
    kinds = [SamplingParams(temperature=0), SamplingParams(temperature=0.8, top_k=1),
             SamplingParams(temperature=1.0, top_p=0.9)]
    reqs = [Request(f"r{i}", [1], kinds[i % 3]) for i in range(7)]
    tokens = Sampler()(logits, reqs)
    argmax = logits.argmax(-1).tolist()
    for i, (t, r) in enumerate(zip(tokens, reqs)):
        assert 0 <= t < 100
        if r.params.greedy or r.params.top_k == 1:
            assert t == argmax[i]
    with pytest.raises(ValueError, match="logit rows"):
        Sampler()(logits[:3], reqs)


def test_bench_step_overhead_toy_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TITAN_RESULTS_DIR", str(tmp_path))
    out = bench_step_overhead.main(["--batch", "4", "8", "--vocab", "300", "--steps", "3", "--name", "toy",
                                    "--compare", "none"])
    assert (tmp_path / "toy.json").exists() and [r["batch"] for r in out["rows"]] == [4, 8]
    for r in out["rows"]:
        assert r["step_ms_min"] > 0 and set(r["parts_ms"]) == set(bench_step_overhead.PARTS)
        assert r["final_only_step_ms"] > 0


def test_mixed_step_host_bench_admits_every_arrival_in_its_step(tmp_path, monkeypatch):
    """bench_mixed_step_host: every timed mixed step admits its arrivals and prefills them in that step (the
    measurement's premise), the batch grows by exactly the arrivals, and the figures are positive times."""
    from phase4_scheduler.bench_mixed_step_host import main, measure_mixed

    for mode in ("sync", "overlap_mixed"):
        r = measure_mixed(batch=8, arrivals=2, prompt_len=20, steps=4, vocab=512, mode=mode)
        assert r["steps_with_a_prefill"] == 8 and r["final_batch"] == 8 + 2 * 8  # 4 mixed steps in each output mode
        assert min(r[k] for k in ("decode_step_host_ms", "mixed_step_host_ms", "decode_step_host_ms_final_only",
                                  "mixed_step_host_ms_final_only", "add_ms")) > 0
        # overlap_mixed ran ahead through the mixed steps (all 8 timed ones, plus decode-only steps between)
        assert (r["overlapped_mixed_steps"] >= 8) == (mode == "overlap_mixed"), r
    with pytest.raises(ValueError, match="mode"):
        measure_mixed(batch=8, arrivals=2, prompt_len=20, steps=4, vocab=512, mode="overlap")
    monkeypatch.setenv("TITAN_RESULTS_DIR", str(tmp_path))
    with pytest.raises(SystemExit):
        main(["--batch", "0"])
