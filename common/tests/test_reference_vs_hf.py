"""The correctness oracle: our reference Llama against HF transformers on the same weights."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from common.config import get_preset
from common.llama import LlamaForCausalLM as Ours
from common.oracle import CHAT_PROMPTS as PROMPTS, hf_greedy, ours_greedy
from common.sampling import SamplingParams
from common.weights import random_state_dict
from phase0_tinyllama.inference_v1 import generate

N_TOKENS = 64


def test_smollm2_logits_match_hf(smollm, hf_smollm):
    ids = torch.tensor([smollm.tokenizer.chat_ids(PROMPTS[0])])
    with torch.no_grad():
        ours, ref = smollm.model(ids), hf_smollm(ids).logits
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_smollm2_greedy_token_identical(smollm, hf_smollm, prompt):
    ids = torch.tensor([smollm.tokenizer.chat_ids(prompt)])
    ours = ours_greedy(smollm.model, ids, N_TOKENS)
    assert len(ours) == N_TOKENS
    assert ours == hf_greedy(hf_smollm, ids, N_TOKENS)


def test_smollm2_knows_paris(smollm):
    ids = torch.tensor([smollm.tokenizer.chat_ids("What is the capital of France?")])
    params = SamplingParams(max_tokens=24, temperature=0.0, stop_token_ids=smollm.tokenizer.stop_token_ids())
    answer = smollm.tokenizer.decode(generate(smollm.model, ids, params)[0])
    assert "Paris" in answer, answer


@pytest.fixture(scope="module")
def tiny_tinyllama():
    """TinyLlama-1.1B shapes (hidden 2048, 32q/4kv heads, vocab 32000) with 2 layers so it runs on a CPU."""
    cfg = get_preset("tinyllama-1.1b").replace(num_hidden_layers=2)
    sd = random_state_dict(cfg, seed=7)
    hf = LlamaForCausalLM(LlamaConfig(**cfg.to_hf_dict())).eval()
    hf.load_state_dict(sd, strict=True)
    return Ours.from_state_dict(cfg, sd), hf


def test_tinyllama_shaped_logits_match_hf(tiny_tinyllama):
    ours, hf = tiny_tinyllama
    ids = torch.randint(0, 32000, (2, 33), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tinyllama_shaped_greedy_token_identical(tiny_tinyllama, seed):
    ours, hf = tiny_tinyllama
    ids = torch.randint(0, 32000, (1, 17), generator=torch.Generator().manual_seed(seed))
    assert ours_greedy(ours, ids, N_TOKENS) == hf_greedy(hf, ids, N_TOKENS)


def test_kv_cache_decode_matches_full_forward(tiny_tinyllama):
    """Logits of each decode step with the cache equal the no-cache forward over the whole sequence."""
    from common.kv_cache import ContiguousKVCache

    ours, _ = tiny_tinyllama
    ids = torch.randint(0, 32000, (2, 12), generator=torch.Generator().manual_seed(11))
    cache = ContiguousKVCache(ours.config, 2, 12)
    with torch.no_grad():
        full = ours(ids)
        step = torch.cat([ours(ids[:, :8], cache=cache)] + [ours(ids[:, i:i + 1], cache=cache) for i in range(8, 12)], 1)
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 2.0},
                                     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}])
def test_rope_theta_and_scaling_match_hf(scaling):
    cfg = get_preset("tinyllama-1.1b").replace(num_hidden_layers=1, hidden_size=256, intermediate_size=512,
                                               num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                               vocab_size=512, rope_theta=50000.0, rope_scaling=scaling)
    sd = random_state_dict(cfg, seed=5)
    hf = LlamaForCausalLM(LlamaConfig(**cfg.to_hf_dict())).eval()
    hf.load_state_dict(sd, strict=True)
    ids = torch.randint(0, 512, (1, 200), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(Ours.from_state_dict(cfg, sd)(ids), hf(ids).logits, rtol=1e-5, atol=1e-4)
