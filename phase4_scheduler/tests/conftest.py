"""Fixtures: a tiny random Llama (engine mechanics, fast) with SmolLM2's tokenizer, and SmolLM2 itself (sparingly)."""
import pytest
import torch

from common.config import ModelConfig
from common.llama import LlamaForCausalLM
from common.model_loader import LoadedModel
from common.weights import random_state_dict

TINY = ModelConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                   tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


def _smollm_tokenizer():
    from common import assets
    from common.tokenizer import load_tokenizer_from_gguf

    path = assets.asset_path("smollm2-gguf")
    return load_tokenizer_from_gguf(path) if path.exists() else None


@pytest.fixture(scope="session")
def tokenizer():
    tok = _smollm_tokenizer()
    if tok is None:
        pytest.skip("the SmolLM2 GGUF is not fetched (run `make setup`)")
    return tok


@pytest.fixture(scope="session")
def tiny():
    """A 2-layer random Llama (std 0.1: clear argmax margins, so greedy tokens do not hinge on rounding)."""
    state = random_state_dict(TINY, seed=0, std=0.1)
    model = LlamaForCausalLM.from_state_dict(TINY, state)
    return LoadedModel(TINY, model, _smollm_tokenizer(), "tiny random llama", torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def tiny_no_tok(tiny):
    return LoadedModel(tiny.config, tiny.model, None, tiny.source, tiny.device, tiny.dtype)


@pytest.fixture(scope="session")
def smollm():
    from common.model_loader import load_model

    try:
        return load_model("smollm2-135m", device="cpu")
    except FileNotFoundError as e:
        pytest.skip(f"SmolLM2 weights missing: {e}")
