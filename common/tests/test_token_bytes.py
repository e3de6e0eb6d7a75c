"""Tokenizer.token_bytes: the bytes of each token of a text join to the text's UTF-8 (byte-level BPE, SmolLM2's
GGUF tokenizer), also where single tokens are parts of characters; byte-fallback and special tokens."""
import random

import pytest

from common.tokenizer import _byte_decoder


@pytest.fixture(scope="module")
def tok():
    from common.model_loader import load_model

    lm = load_model("smollm2-135m", device="cpu", random_weights=True, num_layers=1)
    if lm.tokenizer is None:
        pytest.skip("the SmolLM2 tokenizer asset is missing (run `make setup`)")
    return lm.tokenizer


def test_byte_level_table_is_a_bijection():
    table = _byte_decoder()
    assert sorted(table.values()) == list(range(256)) and len(table) == 256
    assert table["!"] == ord("!") and table["\u0120"] == ord(" ")  # GPT-2's "Ġ" is the space


def test_token_bytes_join_to_the_text(tok):
    rng = random.Random(0)
    alphabet = list("abc xyz,.\n\t") + ["é", "ß", "中", "世界", "😀", "🎉", "\u0301", "ü", "Ω"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        ids = tok.encode(text)
        assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8") == tok.decode(ids).encode("utf-8")
    parts = tok.encode("😀")
    assert len(parts) > 1 and all(tok.decode([i]) == "\ufffd" for i in parts)  # the interesting case is there


def test_special_and_out_of_range_tokens(tok):
    im_end = tok.hf.convert_tokens_to_ids("<|im_end|>")
    assert tok.token_bytes(im_end) == b"<|im_end|>"
    with pytest.raises((ValueError, IndexError, OverflowError)):
        tok.token_bytes(tok.vocab_size + 10)
