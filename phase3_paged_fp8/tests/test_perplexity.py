"""common/perplexity.py (added with this phase): definition, chunked-through-a-cache == one forward, errors."""
import math

import pytest
import torch

from common.perplexity import evaluate, greedy_agreement, perplexity, sharegpt_tokens
from phase3_paged_fp8.paged_cache import PagedKVCache


@pytest.fixture(scope="module")
def tiny():
    from common.model_loader import load_model
    return load_model("smollm2-135m", random_weights=True, device="cpu", dtype="fp32", num_layers=2, seed=3)


def test_matches_the_definition(tiny):
    ids = torch.randint(0, tiny.config.vocab_size, (50,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = tiny.model(ids[None])[0]
    want = math.exp(torch.nn.functional.cross_entropy(logits[:-1], ids[1:]).item())
    assert perplexity(tiny.model, ids, window=64) == pytest.approx(want, rel=1e-5)


def test_chunks_through_a_cache_equal_one_forward(tiny):
    ids = torch.randint(0, tiny.config.vocab_size, (70,), generator=torch.Generator().manual_seed(1))
    plain = evaluate(tiny.model, ids, window=32)
    cached = evaluate(tiny.model, ids, window=32, chunk=7,
                      cache_factory=lambda n: PagedKVCache(tiny.config, 1, n, block_size=5))
    assert plain["num_tokens"] == cached["num_tokens"] == 69 - 2  # 3 windows (32, 32, 6): one token less each
    assert cached["ppl"] == pytest.approx(plain["ppl"], rel=1e-4)
    assert greedy_agreement(plain, cached) == 1.0


def test_sharegpt_slice_is_fixed(tiny):
    if tiny.tokenizer is None:
        pytest.skip("SmolLM2 tokenizer (GGUF asset) not present")
    a = sharegpt_tokens(tiny.tokenizer, 300)
    assert a.shape == (300,) and a.dtype == torch.long
    assert torch.equal(a, sharegpt_tokens(tiny.tokenizer, 300))


def test_errors(tiny):
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(tiny.model, [5], window=8)
    with pytest.raises(ValueError, match="window must be >= 2"):
        perplexity(tiny.model, [5, 6, 7], window=1)
