"""LLMEngine on a tiny random Llama: batching/chunking/preemption leave greedy tokens unchanged, aborts free blocks,
per-request sampling, stop conditions, bad input."""
import random

import pytest
import torch

from common.errors import PromptTooLongError
from common.llama import LlamaForCausalLM
from common.sampling import SamplingParams
from common.weights import random_state_dict
from phase0_tinyllama.inference_v1 import generate as generate_single
from phase4_scheduler.engine import LLMEngine, parse_memory
from phase4_scheduler.llm import LLM
from phase4_scheduler.static_batching import static_engine
from phase4_scheduler.tests.engine_helpers import drive_with_arrivals_and_aborts, prompts

GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)




def run(engine, ps, params):
    return [o.output_token_ids for o in LLM(engine=engine).generate(ps, params)]


@pytest.fixture(scope="module")
def reference(tiny):
    """Greedy tokens of each prompt alone, from phase 0's single-request engine (contiguous cache)."""
    ps = prompts(6)
    return ps, [generate_single(tiny.model, torch.tensor([p]), GREEDY)[0].tolist() for p in ps]


def test_batched_equals_single_request_engine(tiny, reference):
    ps, ref = reference
    assert run(LLMEngine(tiny, num_blocks=64, block_size=16), ps, GREEDY) == ref


def test_chunked_prefill_equals_reference(tiny, reference):
    ps, ref = reference
    eng = LLMEngine(tiny, num_blocks=64, block_size=16, max_num_batched_tokens=7)  # every prompt is chunked
    assert run(eng, ps, GREEDY) == ref
    assert eng.counters["num_steps"] > 30


def test_preemption_under_tiny_pool_gives_same_tokens(tiny, reference):
    ps, ref = reference
    eng = LLMEngine(tiny, num_blocks=7, block_size=8)  # 56 slots for 6 requests of up to 50 tokens
    assert run(eng, ps, GREEDY) == ref
    assert eng.scheduler.num_preemptions > 0
    assert eng.kv.num_free_blocks == eng.kv.num_total_blocks


def test_static_batching_same_tokens_more_steps(tiny, reference):
    ps, ref = reference
    params = [SamplingParams(max_tokens=m, temperature=0, ignore_eos=True) for m in (10, 2, 10, 2, 10, 2)]
    cont = LLMEngine(tiny, num_blocks=64, max_num_seqs=2)
    stat = static_engine(tiny, batch_size=2, num_blocks=64)
    out_c, out_s = run(cont, ps, params), run(stat, ps, params)
    assert out_c == out_s == [r[:p.max_tokens] for r, p in zip(ref, params)]
    assert stat.counters["num_steps"] > cont.counters["num_steps"]  # seats freed early stay empty


def test_abort_frees_blocks(tiny):
    eng = LLMEngine(tiny, num_blocks=32, block_size=4)
    for i, p in enumerate(prompts(4, seed=1)):
        eng.add_request(f"r{i}", p, GREEDY)
    eng.step()
    used = eng.kv.num_total_blocks - eng.kv.num_free_blocks
    assert used > 0
    out = eng.abort_request("r1")
    assert out.finished and out.finish_reason == "abort"
    assert eng.abort_request("r1") is None and eng.abort_request("never") is None
    while eng.has_unfinished():
        eng.step()
    assert eng.kv.num_free_blocks == eng.kv.num_total_blocks


def test_mixed_workload_leaks_no_blocks(tiny):
    eng = LLMEngine(tiny, num_blocks=12, block_size=8, max_num_batched_tokens=32)
    ps = prompts(12, seed=2, hi=30)
    done, asked, n = drive_with_arrivals_and_aborts(eng, ps, random.Random(3), p_add=0.5, p_abort=0.1, max_new=15,
                                                    sampling={"temperature": 0.8, "seed": True}, max_steps=400)
    assert n == len(ps) and not eng.has_unfinished()
    assert eng.kv.num_free_blocks == eng.kv.num_total_blocks and eng.kv.tables.num_sequences == 0
    for rid, o in done.items():  # the ones not aborted got exactly what they asked for
        assert o.finish_reason == "length" and len(o.output_token_ids) == asked[rid]
    assert 0 < len(done) < len(ps)
    assert eng.counters["num_aborted"] + eng.counters["num_finished"] == len(ps)


def test_per_request_sampling(tiny):
    p = prompts(1, seed=5)[0]
    seeded = SamplingParams(max_tokens=8, temperature=1.0, top_k=50, seed=123, ignore_eos=True)
    alone = run(LLMEngine(tiny, num_blocks=32), [p], seeded)[0]
    others = [SamplingParams(max_tokens=8, temperature=0.7, top_p=0.9, seed=s, ignore_eos=True) for s in (1, 2)]
    batched = run(LLMEngine(tiny, num_blocks=32), [p, p, p], [others[0], seeded, others[1]])
    assert batched[1] == alone  # a seeded request draws the same tokens whatever shares its batch
    assert batched[0] != batched[2]  # different seeds, different samples
    top1 = SamplingParams(max_tokens=8, temperature=1.5, top_k=1, ignore_eos=True)
    assert run(LLMEngine(tiny, num_blocks=32), [p], top1)[0] == run(LLMEngine(tiny, num_blocks=32), [p], GREEDY)[0][:8]


def test_stop_token_and_max_tokens(tiny, reference):
    ps, ref = reference
    stop_tok = ref[0][3]
    first = ref[0].index(stop_tok)
    outs = LLM(engine=LLMEngine(tiny, num_blocks=64)).generate(
        [ps[0], ps[1]], [SamplingParams(max_tokens=10, temperature=0, stop_token_ids=[stop_tok]), GREEDY])
    assert outs[0].output_token_ids == ref[0][:first + 1]
    assert outs[0].finish_reason == "stop" and outs[0].stop_reason == stop_tok
    assert outs[1].finish_reason == "length" and len(outs[1].output_token_ids) == 10


def test_eos_stops_unless_ignored(tiny, reference):
    ps, ref = reference
    eng = LLMEngine(tiny, num_blocks=64)
    eng.eos_token_ids = {ref[1][2]}  # pretend the model's EOS is the third greedy token
    out = LLM(engine=eng).generate([ps[1]], SamplingParams(max_tokens=10, temperature=0))[0]
    assert out.output_token_ids == ref[1][:ref[1].index(ref[1][2]) + 1] and out.finish_reason == "stop"
    out = LLM(engine=eng).generate([ps[1]], GREEDY)[0]
    assert out.output_token_ids == ref[1]


def test_stop_string(tiny, reference):
    if tiny.tokenizer is None:
        pytest.skip("needs the SmolLM2 tokenizer")
    ps, ref = reference
    full = tiny.tokenizer.decode(ref[2])
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert stop and stop in full
    out = LLM(engine=LLMEngine(tiny, num_blocks=64)).generate(
        [ps[2]], SamplingParams(max_tokens=10, temperature=0, stop=[stop], ignore_eos=True))[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == full[:full.index(stop)]
    n = len(out.output_token_ids)  # it stopped at the token that completed the stop string
    assert out.output_token_ids == ref[2][:n]
    assert stop in tiny.tokenizer.decode(ref[2][:n]) and stop not in tiny.tokenizer.decode(ref[2][:n - 1])


def test_bad_input_gives_clear_errors(tiny, tiny_no_tok):
    eng = LLMEngine(tiny, num_blocks=8, block_size=16, max_model_len=100)
    with pytest.raises(ValueError, match="empty"):
        eng.add_request("a", [], GREEDY)
    with pytest.raises(ValueError, match="vocabulary"):
        eng.add_request("a", [49152], GREEDY)
    with pytest.raises(PromptTooLongError, match="context"):
        eng.add_request("a", [5] * 100, GREEDY)
    with pytest.raises(PromptTooLongError, match="at most 10 new tokens"):
        eng.add_request("a", [5] * 90, SamplingParams(max_tokens=20))
    small = LLMEngine(tiny, num_blocks=2, block_size=16)
    with pytest.raises(PromptTooLongError, match="KV pool"):
        small.add_request("a", [5] * 30, SamplingParams(max_tokens=5))
    with pytest.raises(TypeError, match="SamplingParams"):
        eng.add_request("a", [5], {"max_tokens": 3})
    with pytest.raises(TypeError, match="prompts must be a string, a list of token ids, or a list of either; got int"):
        LLM(engine=eng).generate(5, GREEDY)
    with pytest.raises(ValueError, match="stop strings"):
        eng.add_request("a", [5], SamplingParams(stop=[""]))
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    eng.add_request("a", [5], GREEDY)
    with pytest.raises(ValueError, match="already in use"):
        eng.add_request("a", [6], GREEDY)
    with pytest.raises(ValueError, match="need a tokenizer"):
        LLMEngine(tiny_no_tok, num_blocks=8).add_request("b", [5], SamplingParams(stop=["x"]))
    with pytest.raises(ValueError, match="one per prompt"):
        LLM(engine=LLMEngine(tiny, num_blocks=8)).generate([[5], [6]], [GREEDY])
    with pytest.raises(ValueError, match="kv_memory"):
        parse_memory("lots", torch.device("cpu"))
    assert parse_memory("2MiB", torch.device("cpu")) == 2 * 2**20
    assert parse_memory("0.000001TiB", torch.device("cpu")) == int(1e-6 * 2**40)
    with pytest.raises(ValueError, match=r"kv_memory='1024TiB' asks for 1,048,576.0 GiB but cpu has .* available"):
        parse_memory("1024TiB", torch.device("cpu"))  # refused with both numbers, before any allocation
    with pytest.raises(ValueError, match="asks for"):
        LLMEngine(tiny, kv_memory=2**70)  # was num_blocks out of the allocator's range: the wrong message
    for text in ("0.5", " 0.3 ", "3e-1"):  # a string fraction is a fraction, not half a byte (what the CLIs send)
        with pytest.raises(ValueError, match="is a fraction of free GPU memory; on cpu give bytes"):
            parse_memory(text, torch.device("cpu"))
    for bad in ("1.2.3GiB", True, None, -5):
        with pytest.raises(ValueError, match="must look like"):
            parse_memory(bad, torch.device("cpu"))
    with pytest.raises(ValueError, match="max_model_len=4096 is outside"):
        LLMEngine(tiny, num_blocks=8, max_model_len=4096)
    with pytest.raises(ValueError, match="no block"):
        LLMEngine(tiny, kv_memory=100)


def test_stats_and_repr(tiny):
    eng = LLMEngine(tiny, kv_memory="1MiB", block_size=16)
    eng.add_request("a", [5, 6, 7], GREEDY)
    eng.step()
    s = eng.stats()
    assert s["num_running"] == 1 and s["num_waiting"] == 0 and 0 < s["kv_usage"] <= 1
    assert s["num_total_blocks"] == 2**20 // (16 * tiny.config.kv_bytes_per_token(4))
    assert "Scheduler" in repr(eng) and "ModelRunner" in repr(eng)


def test_triton_path_under_interpreter_matches_reference(tiny, reference):
    """The GPU path (phase 3's Triton write / prefill / decode kernels) run by the Triton CPU interpreter."""
    import os
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 (set by conftest on CPU)")
    ps, ref = reference
    params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    eng = LLMEngine(tiny, num_blocks=16, block_size=16, backend="triton", max_num_batched_tokens=24)
    assert eng.runner.decode_fn is not None
    assert run(eng, ps[:2], params) == [r[:3] for r in ref[:2]]


def test_warmup_leaves_an_idle_engine_with_zeroed_counters():
    from phase4_scheduler.engine import LLMEngine

    eng = LLMEngine.from_model("tinyllama-1.1b", device="cpu", random_weights=True, num_layers=1, num_blocks=16,
                               max_model_len=64)
    eng.warmup()
    assert not eng.has_unfinished() and eng.kv.num_free_blocks == eng.kv.num_total_blocks
    assert eng.counters["num_requests"] == 0 and eng.counters["num_steps"] == 0
    seen = []
    inner = eng.runner.execute
    eng.runner.execute = lambda ids, *a, **k: (seen.append(len(ids)), inner(ids, *a, **k))[1]
    eng.warmup(prefill_ladder=True)  # every prefill size class up to the step budget (64 here), one request each
    assert {2, 4, 8, 16, 32, 63}.issubset(seen)  # 63: max_model_len - 1 caps the ladder's top
    assert not eng.has_unfinished() and eng.kv.num_free_blocks == eng.kv.num_total_blocks
    assert eng.counters["num_requests"] == 0 and eng.counters["num_steps"] == 0


def test_second_fused_engine_reuses_the_fused_model(tiny, reference):
    """fuse=True consumes loaded.model; a second engine over the same LoadedModel (benchmarks build continuous and
    static engines in turn; the GPU overlap test builds two) reuses the fused model instead of failing to fuse it
    again, and both give the reference's greedy tokens."""
    from common.model_loader import LoadedModel
    from phase4_scheduler.fused_model import FusedLlamaForCausalLM

    ps, ref = reference
    state = random_state_dict(tiny.config, seed=0, std=0.1)  # tiny's own weights, in a model this test may consume
    own = LoadedModel(tiny.config, LlamaForCausalLM.from_state_dict(tiny.config, state), None, tiny.source,
                      tiny.device, tiny.dtype)
    first = LLMEngine(own, num_blocks=64, block_size=16, fuse=True, detokenize=False)
    fused = own.model
    assert isinstance(fused, FusedLlamaForCausalLM)
    second = LLMEngine(own, num_blocks=64, block_size=16, fuse=True, detokenize=False)
    assert own.model is fused
    assert run(first, ps, GREEDY) == ref and run(second, ps, GREEDY) == ref


def test_a_vanishing_top_p_is_greedy_and_the_engine_goes_on(tiny):
    """top_p=1e-300 passes every check (0 < top_p <= 1) but is 0 in fp32: it used to drop every token, and
    torch.multinomial raised inside the step (a server's engine died with it). It is greedy now, beside others."""
    eng = LLMEngine(tiny, num_blocks=32, block_size=16)
    ps = prompts(3, seed=8)
    greedy = [o.output_token_ids for o in LLM(engine=eng).generate(ps, SamplingParams(max_tokens=5, ignore_eos=True,
                                                                                       temperature=0))]
    tiny_p = SamplingParams(max_tokens=5, ignore_eos=True, temperature=1.0, top_p=1e-300)
    mixed = LLM(engine=eng).generate(ps, [tiny_p, SamplingParams(max_tokens=5, ignore_eos=True, temperature=1.0,
                                                                 seed=1), tiny_p])
    assert [mixed[0].output_token_ids, mixed[2].output_token_ids] == [greedy[0], greedy[2]]
    assert len(mixed[1].output_token_ids) == 5 and eng.kv.num_free_blocks == 32
