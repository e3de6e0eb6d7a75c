"""Overlapped decode (overlap.py) on the CPU: the engine that launches step N+1 before resolving step N gives exactly
the tokens, stops, texts and streamed deltas of the synchronous engine, frees every block, and falls back to
synchronous steps where it cannot run ahead (admissions, a KV pool that must preempt). Seeded sampling draws the same
tokens as the synchronous engine (each request's generator is advanced in step order on the device)."""
import random

import pytest
import torch

from common.sampling import SamplingParams
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.llm import LLM
from phase4_scheduler.overlap import PLACEHOLDER
from phase4_scheduler.tests.engine_helpers import drive_with_arrivals_and_aborts, prompts




def engines(tiny, **kw):
    kw = {"num_blocks": 96, "block_size": 8, **kw}
    return LLMEngine(tiny, overlap=False, **kw), LLMEngine(tiny, overlap=True, **kw)


def stream(eng, reqs):
    """Add every (prompt, params), step to the end; per request: concatenated deltas, the final output."""
    for i, (p, sp) in enumerate(reqs):
        eng.add_request(f"r{i}", p, sp)
    deltas, final = {}, {}
    while eng.has_unfinished():
        for o in eng.step():
            assert PLACEHOLDER not in o.new_token_ids and PLACEHOLDER not in o.output_token_ids
            deltas.setdefault(o.request_id, []).extend(o.new_token_ids)
            if o.finished:
                final[o.request_id] = o
    assert eng.kv.num_free_blocks == eng.kv.num_total_blocks, "blocks leaked"
    return deltas, final


def test_greedy_varied_lengths_identical_and_overlapped(tiny):
    reqs = [(p, SamplingParams(max_tokens=m, temperature=0, ignore_eos=True))
            for p, m in zip(prompts(7, seed=11), (1, 2, 5, 9, 13, 3, 20))]
    (d_sync, f_sync), (d_ov, f_ov) = (stream(e, reqs) for e in engines(tiny))
    assert {k: o.output_token_ids for k, o in f_ov.items()} == {k: o.output_token_ids for k, o in f_sync.items()}
    assert d_ov == d_sync  # streamed deltas add up to the same tokens
    assert all(len(f_ov[f"r{i}"].output_token_ids) == sp.max_tokens for i, (_, sp) in enumerate(reqs))


def test_overlap_actually_runs_ahead(tiny):
    sync, ov = engines(tiny)
    ps = prompts(4, seed=12)
    sp = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    assert LLM(engine=ov).generate(ps, sp) and ov.counters["num_overlapped_steps"] >= 9
    LLM(engine=sync).generate(ps, sp)
    assert sync.counters["num_overlapped_steps"] == 0


def test_stops_eos_and_stop_strings_match_sync(tiny):
    ps = prompts(5, seed=13)
    ref = [o.output_token_ids for o in LLM(engine=engines(tiny)[0]).generate(
        ps, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))]
    params = [SamplingParams(max_tokens=12, temperature=0, stop_token_ids=[ref[0][4]]),
              SamplingParams(max_tokens=12, temperature=0),  # EOS below
              SamplingParams(max_tokens=12, temperature=0, ignore_eos=True),
              SamplingParams(max_tokens=7, temperature=0, ignore_eos=True),
              SamplingParams(max_tokens=12, temperature=0, stop_token_ids=[ref[4][0]])]  # stops at its first token
    if tiny.tokenizer is not None:
        full = tiny.tokenizer.decode(ref[2])
        params[2] = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True,
                                   stop=[full[len(full) // 2:len(full) // 2 + 3]])
    results = []
    for eng in engines(tiny):
        eng.eos_token_ids = {ref[1][3]}
        d, f = stream(eng, list(zip(ps, params)))
        results.append(([(f[k].output_token_ids, f[k].finish_reason, f[k].stop_reason, f[k].text)
                         for k in sorted(f)], d))
    assert results[0] == results[1]
    assert [r[1] for r in results[1][0]][:2] == ["stop", "stop"] and len(results[1][0][4][0]) == 1


def drive_and_check_no_leaks(eng, ps, rng, **drive) -> None:
    """Arrivals and aborts while steps are in flight (engine_helpers.drive_with_arrivals_and_aborts, greedy): every
    request arrives, the survivors get their exact token counts, no placeholder reaches an output or an abort's
    final output, every block and sequence is freed."""
    def no_placeholder(out):
        assert out is None or PLACEHOLDER not in out.output_token_ids

    done, asked, n = drive_with_arrivals_and_aborts(eng, ps, rng, sampling={"temperature": 0},
                                                    on_abort=no_placeholder, on_output=no_placeholder, **drive)
    assert n == len(ps) and not eng.has_unfinished()
    assert eng.kv.num_free_blocks == eng.kv.num_total_blocks and eng.kv.tables.num_sequences == 0
    assert done and all(len(o.output_token_ids) == asked[k] for k, o in done.items())


def test_arrivals_aborts_and_no_leaks(tiny):
    """Requests arrive and are aborted while steps are in flight: the survivors get their exact token counts."""
    for eng in engines(tiny, max_num_batched_tokens=64):
        drive_and_check_no_leaks(eng, prompts(14, seed=14, hi=25), random.Random(5), p_add=0.3, p_abort=0.08,
                                 max_new=16, max_steps=600)
        assert (eng.counters["num_overlapped_steps"] > 0) == eng.overlap


def test_falls_back_where_it_cannot_run_ahead(tiny):
    ps = prompts(6, seed=15)
    greedy = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    ref = [o.output_token_ids for o in LLM(engine=engines(tiny)[0]).generate(ps, greedy)]
    small = LLMEngine(tiny, overlap=True, num_blocks=14, block_size=4)  # must preempt: never runs ahead then
    assert [o.output_token_ids for o in LLM(engine=small).generate(ps, greedy)] == ref
    assert small.scheduler.num_preemptions > 0

    assert engines(tiny)[1].overlap and not LLMEngine(tiny, num_blocks=8).overlap  # default: on with CUDA graphs only


def test_runner_token_src_rejects_prefill_steps(tiny):
    eng = LLMEngine(tiny, num_blocks=16)
    src = (torch.tensor([5, 6]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="decode-only"):
        eng.runner.execute([1, 2, 3], [0, 1, 2], [3], [3], [[0]], [0, 1, 2], token_src=src)


def tiny_cuda_loaded():
    """A 2-layer fp32 Llama with random weights on the GPU, no tokenizer (the overlap GPU tests' model)."""
    from common.config import ModelConfig
    from common.llama import LlamaForCausalLM
    from common.model_loader import LoadedModel
    from common.weights import random_state_dict

    cfg = ModelConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    dev = torch.device("cuda")
    model = LlamaForCausalLM.from_state_dict(cfg, random_state_dict(cfg, seed=0, std=0.1, device=dev))
    return LoadedModel(cfg, model.to(dev), None, "tiny", dev, torch.float32)


@pytest.mark.gpu
def test_gpu_overlap_with_cuda_graphs_matches_sync():
    """On the GPU: graphs + overlapped decode (the default) give the tokens of graphs without overlap, in fp32."""
    loaded = tiny_cuda_loaded()
    reqs = [(p, SamplingParams(max_tokens=m, temperature=0, ignore_eos=True))
            for p, m in zip(prompts(9, seed=21), (1, 3, 8, 17, 30, 5, 12, 2, 25))]
    kw = {"num_blocks": 128, "block_size": 16, "max_num_seqs": 16, "cuda_graph": True, "detokenize": False}
    on, off = LLMEngine(loaded, **kw), LLMEngine(loaded, overlap=False, **kw)
    assert on.overlap and not off.overlap
    (d_on, f_on), (d_off, f_off) = stream(on, reqs), stream(off, reqs)
    assert {k: o.output_token_ids for k, o in f_on.items()} == {k: o.output_token_ids for k, o in f_off.items()}
    assert d_on == d_off and on.counters["num_overlapped_steps"] > 10


def test_runs_ahead_while_admission_is_held(tiny):
    """Static batching (queue waits for the whole batch) and admission batching (held until k seats are free) keep
    requests waiting without admitting them: overlapped decode still runs ahead, with the sync engine's tokens."""
    from phase4_scheduler.static_batching import static_engine

    ps = prompts(9, seed=23)
    params = [SamplingParams(max_tokens=m, temperature=0, ignore_eos=True) for m in (3, 9, 14, 6, 11, 4, 8, 12, 5)]
    outs = []
    for overlap in (False, True):
        eng = static_engine(tiny, 3, num_blocks=96, block_size=8, overlap=overlap)
        outs.append([o.output_token_ids for o in LLM(engine=eng).generate(ps, params)])
        assert (eng.counters["num_overlapped_steps"] > 0) == overlap
        assert eng.kv.num_free_blocks == eng.kv.num_total_blocks
    assert outs[0] == outs[1]
    held = [LLMEngine(tiny, num_blocks=96, block_size=8, max_num_seqs=4, admit_min_free_seats=3, overlap=o)
            for o in (False, True)]
    res = [[o.output_token_ids for o in LLM(engine=e).generate(ps, params)] for e in held]
    assert res[0] == res[1] and held[1].counters["num_overlapped_steps"] > 0


def test_may_admit_has_no_side_effects(tiny):
    eng = LLMEngine(tiny, num_blocks=96, block_size=8, max_num_seqs=2, admit_min_free_seats=1)
    assert not eng.scheduler.may_admit()
    for i, p in enumerate(prompts(3, seed=24)):
        eng.add_request(f"m{i}", p, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    assert eng.scheduler.may_admit()  # nothing running, requests waiting
    eng.step()  # admits two: the seats are full
    held = eng.scheduler.held_steps
    assert not eng.scheduler.may_admit() and eng.scheduler.held_steps == held


def test_first_launch_after_a_preempting_step_with_held_admission(tiny):
    """A decode-only plan that preempted (victims back in the queue, admission held by admission batching) may start
    an overlapped run: the tokens stay those of the synchronous engine."""
    ps = prompts(6, seed=25, lo=20, hi=30)
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    outs, engines_ = [], []
    for overlap in (False, True):  # 4 seats, admission only when all 4 are free: a victim waits while 3 decode
        eng = LLMEngine(tiny, num_blocks=40, block_size=4, max_num_seqs=4, admit_min_free_seats=4, overlap=overlap)
        outs.append([o.output_token_ids for o in LLM(engine=eng).generate(ps, params)])
        engines_.append(eng)
        assert eng.kv.num_free_blocks == eng.kv.num_total_blocks
    assert outs[0] == outs[1] and all(len(o) == 24 for o in outs[1])
    assert engines_[1].scheduler.num_preemptions > 0


def test_seeded_sampling_overlaps_with_the_sync_engines_tokens(tiny):
    ps = prompts(5, seed=26)
    params = [SamplingParams(max_tokens=m, temperature=t, top_k=k, top_p=tp, seed=sd, ignore_eos=True)
              for m, t, k, tp, sd in ((9, 0.9, 0, 1.0, 7), (4, 1.3, 50, 0.9, 8), (12, 0.7, 0, 0.8, 9), (7, 0.0, 0, 1.0, None),
                                      (10, 1.0, 20, 1.0, 11))]
    (d_sync, f_sync), (d_ov, f_ov) = (stream(e, list(zip(ps, params))) for e in engines(tiny))
    assert {k: o.output_token_ids for k, o in f_ov.items()} == {k: o.output_token_ids for k, o in f_sync.items()}
    assert d_ov == d_sync
    unseeded = [SamplingParams(max_tokens=6, temperature=0.8, ignore_eos=True)] * 3  # global RNG: counts only
    eng = engines(tiny)[1]
    outs = LLM(engine=eng).generate(ps[:3], unseeded)
    assert [len(o.output_token_ids) for o in outs] == [6, 6, 6] and eng.counters["num_overlapped_steps"] > 0
    assert eng.kv.num_free_blocks == eng.kv.num_total_blocks


def test_sample_on_device_matches_the_host_sampler(tiny):
    from phase4_scheduler.request import Request
    from phase4_scheduler.sampler import Sampler

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    ps = [SamplingParams(max_tokens=3, temperature=0), SamplingParams(max_tokens=3, temperature=1.0, seed=3),
          SamplingParams(max_tokens=3, temperature=0.5, top_k=5, seed=4), SamplingParams(max_tokens=3, temperature=0)]
    a = [Request(f"a{i}", [1], p) for i, p in enumerate(ps)]
    b = [Request(f"b{i}", [1], p) for i, p in enumerate(ps)]
    dev = Sampler().sample_on_device(logits, a)
    assert dev.dtype == torch.long and dev.shape == (4,)
    assert dev.tolist() == Sampler()(logits, b)
    assert dev[0] == logits[0].argmax() and dev[3] == logits[3].argmax()
    with pytest.raises(ValueError, match="logit rows"):
        Sampler().sample_on_device(logits, a[:2])


@pytest.mark.parametrize("overlap", [False, True])
def test_on_forward_hook_fires_once_per_step_before_the_outputs(tiny, overlap):
    """engine.step(on_forward=...) calls the hook once per step, after the launch and before the step's outputs
    exist (AsyncEngine then delivers the previous step's outputs while the device computes)."""
    eng = LLMEngine(tiny, num_blocks=64, block_size=8, overlap=overlap)
    for i, p in enumerate(prompts(3, seed=27)):
        eng.add_request(f"h{i}", p, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    fired, steps = [], 0
    while eng.has_unfinished():
        n_before = eng.counters["num_generation_tokens"]
        eng.step(on_forward=lambda: fired.append(eng.counters["num_generation_tokens"]))
        steps += 1
        assert len(fired) == steps and fired[-1] == n_before  # fired once, before this call resolved any token
    assert eng.counters["num_generation_tokens"] == 15


@pytest.mark.parametrize("overlap", [False, True])
def test_direct_graph_io_engine_matches_the_plain_engine(tiny, overlap):
    """The engine over decode graphs with TITAN_GRAPH_IO=direct (capture=False: the graphs' three steps run under
    the interpreter): greedy rows take the graph's tokens (and, when no row sampled, its host copy: no copy_out),
    seeded sampled rows are drawn into the same buffer; tokens identical to the plain synchronous engine's."""
    from phase4_scheduler.cuda_graphs import DecodeGraphs

    ps = prompts(5, seed=31)
    params = [SamplingParams(max_tokens=m, temperature=t, seed=sd, ignore_eos=True)
              for m, t, sd in ((9, 0.0, None), (6, 0.9, 5), (12, 0.0, None), (3, 0.0, None), (8, 1.2, 6))]
    ref = stream(LLMEngine(tiny, overlap=False, num_blocks=96, block_size=8), list(zip(ps, params)))
    eng = LLMEngine(tiny, overlap=overlap, num_blocks=96, block_size=8, max_num_seqs=8)
    eng.runner.graphs = DecodeGraphs(eng.runner, 8, eng.max_model_len, capture=False, io="direct")
    copies = []
    if overlap:
        inner = eng._ring.copy_out
        eng._ring.copy_out = lambda t: (copies.append(t.shape[0]), inner(t))[1]
    got = stream(eng, list(zip(ps, params)))
    assert {k: o.output_token_ids for k, o in got[1].items()} == {k: o.output_token_ids for k, o in ref[1].items()}
    assert got[0] == ref[0] and eng.runner.graphs.steps > 5
    if overlap:  # steps whose rows were all greedy came back through the graph's host tokens, not copy_out
        assert eng.counters["num_overlapped_steps"] > 0 and len(copies) < eng.counters["num_steps"]
