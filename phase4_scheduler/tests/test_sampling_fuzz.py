"""Sampling parameters at their extremes, mixed in one batch, never fail a step.

A step that raises ends every request in it, and in a server the engine with them (503 until a restart), so any
value that passes validation must sample. The case that did not: top_p=1e-300 (0 in fp32) dropped every token and
torch.multinomial raised on the NaN row (common/sampling.py's filter_logits). This drives seeded random batches of
extreme values through the engine: every request gets exactly its tokens and no block leaks (it fails without the
top_p fix). On the GPU the same with CUDA graphs and overlapped decode, where sampling runs on the device."""
from __future__ import annotations

import random

import pytest
import torch

from common.sampling import SamplingParams
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.llm import LLM


def extreme_params(rng: random.Random, vocab: int) -> SamplingParams:
    kw = dict(temperature=rng.choice([0, 1e-5, 1e-4, 0.3, 2.0]),
              top_p=rng.choice([1e-300, 1e-40, 1e-6, 0.5, 1.0]),
              top_k=rng.choice([-1, 0, 1, 2, vocab - 1, vocab, vocab + 10]),
              presence_penalty=rng.choice([-2.0, 0.0, 2.0]), frequency_penalty=rng.choice([-2.0, 0.0, 2.0]),
              repetition_penalty=rng.choice([1e-300, 1e-30, 0.5, 1.0, 2.0, 1e30, 1e300]),
              seed=rng.choice([None, 0, 2 ** 63 - 1, -(2 ** 63)]))
    if rng.random() < 0.3:
        kw["logit_bias"] = {rng.randrange(vocab): rng.choice([-100.0, 100.0]) for _ in range(rng.randrange(1, 50))}
    return SamplingParams(max_tokens=rng.randrange(1, 6), ignore_eos=True, **kw)


def fuzz(engine: LLMEngine, batches: int, seed: int) -> None:
    rng, vocab = random.Random(seed), engine.config.vocab_size
    free = engine.kv.num_free_blocks
    for _ in range(batches):
        params = [extreme_params(rng, vocab) for _ in range(6)]
        prompts = [[rng.randrange(vocab) for _ in range(rng.randrange(1, 30))] for _ in params]
        outs = LLM(engine=engine).generate(prompts, params)
        assert [len(o.output_token_ids) for o in outs] == [p.max_tokens for p in params]
        assert all(0 <= t < vocab for o in outs for t in o.output_token_ids)
    assert engine.kv.num_free_blocks == free and not engine.has_unfinished()


def test_extreme_sampling_parameters_never_fail_a_step(tiny_no_tok):
    fuzz(LLMEngine(tiny_no_tok, num_blocks=64, block_size=16, max_num_seqs=8, detokenize=False), batches=12, seed=0)


@pytest.mark.gpu
def test_gpu_extreme_sampling_parameters_never_fail_a_step():
    from phase4_scheduler.tests.test_overlap import tiny_cuda_loaded

    eng = LLMEngine(tiny_cuda_loaded(), num_blocks=128, block_size=16, max_num_seqs=8, cuda_graph=True,
                    detokenize=False)
    fuzz(eng, batches=30, seed=1)
    torch.cuda.synchronize()
