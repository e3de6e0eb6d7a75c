"""Log-probabilities (SamplingParams.logprobs): each output token's logprob and top alternatives equal log_softmax of
the reference model's logits at that position (the model's raw distribution, whatever temperature / top-k sampled
it), through the synchronous and the overlapped engine, and refused when out of range."""
import math

import pytest
import torch

from common.sampling import MAX_LOGPROBS, SamplingParams
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.tests.engine_helpers import prompts


def reference_logprobs(model, prompt: list[int], out: list[int]) -> torch.Tensor:
    """log_softmax of the reference model's logits at every output position: [len(out), V] (fp32, one forward)."""
    ids = torch.tensor([prompt + out[:-1]], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(ids)[0, len(prompt) - 1:]
    return torch.log_softmax(logits.float(), -1)


def run(eng: LLMEngine, reqs: dict) -> dict:
    for rid, (p, sp) in reqs.items():
        eng.add_request(rid, p, sp)
    done = {}
    while eng.has_unfinished():
        for o in eng.step():
            if o.finished:
                done[o.request_id] = o
    return done


def check(model, prompt, out, k, tol=1e-4):
    ref = reference_logprobs(model, prompt, out.output_token_ids)
    assert len(out.logprobs) == len(out.output_token_ids)
    for pos, (tok, lp, top) in enumerate(out.logprobs):
        assert tok == out.output_token_ids[pos]
        assert lp == pytest.approx(ref[pos, tok].item(), abs=tol)
        assert len(top) == k
        want = ref[pos].topk(k)
        assert [t for t, _ in top] == want.indices.tolist()
        assert [v for _, v in top] == pytest.approx(want.values.tolist(), abs=tol)
        assert all(a >= b for (_, a), (_, b) in zip(top, top[1:]))


@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "overlap-engine"])
def test_logprobs_match_the_reference_model(tiny, overlap):
    """Greedy, sampled (temperature + top-k: still the raw distribution's logprobs) and k = 0 requests next to one
    that asks for none (which gets None), in one engine."""
    ps = prompts(4, seed=11)
    reqs = {"greedy": (ps[0], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=5)),
            "sampled": (ps[1], SamplingParams(max_tokens=6, temperature=0.8, top_k=3, seed=1, ignore_eos=True,
                                              logprobs=2)),
            "only-token": (ps[2], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, logprobs=0)),
            "none": (ps[3], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))}
    done = run(LLMEngine(tiny, num_blocks=64, block_size=8, overlap=overlap), reqs)
    check(tiny.model, ps[0], done["greedy"], 5)
    check(tiny.model, ps[1], done["sampled"], 2)
    check(tiny.model, ps[2], done["only-token"], 0)
    assert done["none"].logprobs is None and done["none"].new_logprobs is None
    g = done["greedy"].logprobs
    assert all(top[0][0] == tok for tok, _, top in g)  # greedy picks the most likely token
    assert all(lp <= 0 and sum(math.exp(v) for _, v in top) <= 1 + 1e-6 for _, lp, top in g)


def test_streamed_increments_add_up_and_overlap_pauses_only_while_asked(tiny):
    """Per-step outputs carry the new tokens' logprobs (joined: the final list); the overlapped engine stays
    synchronous while a logprobs request runs and overlaps again once it has finished."""
    eng = LLMEngine(tiny, num_blocks=64, block_size=8, overlap=True)
    ps = prompts(2, seed=5)
    eng.add_request("lp", ps[0], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True, logprobs=1))
    eng.add_request("long", ps[1], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
    joined, final, overlapped_while = [], None, 0
    while eng.has_unfinished():
        before = eng.counters["num_overlapped_steps"]
        for o in eng.step():
            if o.request_id == "lp":
                joined += o.new_logprobs
                final = o if o.finished else final
        if final is None:
            overlapped_while += eng.counters["num_overlapped_steps"] - before
    assert joined == final.logprobs and len(joined) == 5
    assert overlapped_while == 0 and eng.counters["num_overlapped_steps"] > 0


def test_bad_logprobs_are_refused():
    for bad in (-1, MAX_LOGPROBS + 1, 2.5, True):
        with pytest.raises(ValueError, match="logprobs"):
            SamplingParams(logprobs=bad)
    assert SamplingParams(logprobs=MAX_LOGPROBS).logprobs == MAX_LOGPROBS


@pytest.mark.gpu
def test_gpu_logprobs_and_processors_under_cuda_graphs():
    """On the GPU with CUDA graphs and overlapped decode (the defaults), in fp32: logprobs and prompt logprobs equal
    the reference model's log_softmax, a logit-bias request is forced, and the other requests' tokens are those of
    the engine without any such request (the synchronous steps they force change nothing but timing)."""
    from common.config import ModelConfig
    from common.llama import LlamaForCausalLM
    from common.model_loader import LoadedModel
    from common.weights import random_state_dict

    cfg = ModelConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    dev = torch.device("cuda")
    model = LlamaForCausalLM.from_state_dict(cfg, random_state_dict(cfg, seed=0, std=0.1, device=dev)).to(dev)
    loaded = LoadedModel(cfg, model, None, "tiny", dev, torch.float32)
    ps = prompts(5, seed=8)
    plain = {f"p{i}": (ps[i], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)) for i in range(3)}
    extra = {"lp": (ps[3], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=4,
                                          prompt_logprobs=2)),
             "bias": (ps[4], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True, logit_bias={77: 100.0}))}
    kw = dict(num_blocks=128, block_size=16, max_num_seqs=16, cuda_graph=True, detokenize=False)
    alone = run(LLMEngine(loaded, **kw), dict(plain))
    mixed_eng = LLMEngine(loaded, **kw)
    assert mixed_eng.overlap
    mixed = run(mixed_eng, {**plain, **extra})
    assert all(mixed[k].output_token_ids == alone[k].output_token_ids for k in plain)
    check(model, ps[3], mixed["lp"], 4, tol=1e-3)  # (the GPU's kernels: not bit-equal to the reference)
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ps[3]], device=dev))[0, :-1].float(), -1)
    got = mixed["lp"].prompt_logprobs
    assert len(got) == len(ps[3]) and got[0][1] is None
    assert [e[1] for e in got[1:]] == pytest.approx([ref[j, ps[3][j + 1]].item() for j in range(len(ps[3]) - 1)],
                                                    abs=1e-3)
    assert mixed["bias"].output_token_ids == [77] * 5


@pytest.mark.parametrize("kw", [dict(), dict(max_num_batched_tokens=7), dict(num_blocks=9)],
                         ids=["whole-prompts", "chunked-prefill", "preemption"])
def test_prompt_logprobs_match_the_reference_model(tiny, kw):
    """SamplingParams.prompt_logprobs: every prompt token after the first scored given the ones before it (the
    first: None), equal to the reference model's log_softmax, whether the prompt is prefilled whole, in chunks of 7
    tokens, or recomputed after a preemption (scored once); beside requests that ask for nothing."""
    ps = prompts(4, seed=31, lo=9, hi=30)
    reqs = {f"r{i}": (p, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True,
                                         prompt_logprobs=(3, None, 0, 1)[i])) for i, p in enumerate(ps)}
    eng = LLMEngine(tiny, **{"num_blocks": 64, "block_size": 8, **kw})
    done = run(eng, reqs)
    assert eng.scheduler.num_preemptions > 0 if "num_blocks" in kw else True
    for i, p in enumerate(ps):
        out, k = done[f"r{i}"], reqs[f"r{i}"][1].prompt_logprobs
        if k is None:
            assert out.prompt_logprobs is None
            continue
        assert len(out.prompt_logprobs) == len(p) and out.prompt_logprobs[0] == (p[0], None, ())
        ids = torch.tensor([p], device=next(tiny.model.parameters()).device)
        with torch.no_grad():
            ref = torch.log_softmax(tiny.model(ids)[0, :-1].float(), -1)  # row j scores prompt token j + 1
        for j, (tok, lp, top) in enumerate(out.prompt_logprobs[1:]):
            assert tok == p[j + 1] and lp == pytest.approx(ref[j, tok].item(), abs=1e-4)
            want = ref[j].topk(k)
            assert [t for t, _ in top] == want.indices.tolist()
            assert [v for _, v in top] == pytest.approx(want.values.tolist(), abs=1e-4)
    assert not eng._prompt_lp_ids and not eng._sync_ids
