"""SmolLM2-135M (real weights): LLM.generate over a batch equals phase 0's single-request engine token for token."""
import torch

from common import artifacts
from common.sampling import SamplingParams
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.llm import LLM

PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time there was a little", "def fib(n):"]


def test_batched_greedy_equals_single_request_engine(smollm):
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    # a small token budget: the step mixes decodes with chunks of the longer prompts
    llm = LLM(engine=LLMEngine(smollm, num_blocks=16, block_size=16, max_num_batched_tokens=10))
    outs = llm.generate(PROMPTS, params)
    single = artifacts.get("engine.generate")
    for prompt, out in zip(PROMPTS, outs):
        ids = smollm.tokenizer.encode(prompt)
        ref = single(smollm.model, torch.tensor([ids]), params)[0].tolist()
        assert out.output_token_ids == ref, prompt
        assert out.text == smollm.tokenizer.decode(ref)
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_total_blocks
    assert "Paris" in outs[0].text
