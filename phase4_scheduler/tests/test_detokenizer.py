"""Incremental detokenisation: deltas add up to the full decode, never a broken character; stop strings cut."""
import pytest

from phase4_scheduler.detokenizer import IncrementalDetokenizer

TEXTS = ["Hello, world! 你好世界 🎉🚀 naïve café — done.", "  leading spaces\nand\ttabs, 1234567890 ∑∫√ 😀😃"]


def stream(tok, ids, prompt=(), stop=None):
    d = IncrementalDetokenizer(tok, list(prompt), stop)
    deltas, hit = [], None
    for t in ids:
        hit = d.add_token(t)
        deltas.append(d.delta(finished=hit is not None))
        if hit is not None:
            break
    deltas.append(d.delta(finished=True))
    return d, deltas, hit


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_add_up_and_never_break_characters(tokenizer, text):
    ids = tokenizer.encode(text)
    assert len(ids) > len(text) // 4  # multi-token characters are in there
    d, deltas, hit = stream(tokenizer, ids, prompt=tokenizer.encode("Say:"))
    assert hit is None
    assert "".join(deltas) == tokenizer.decode(ids) == d.text
    assert not any("\ufffd" in x for x in deltas)


def test_emoji_split_over_tokens_waits(tokenizer):
    ids = tokenizer.encode("🎉")
    assert len(ids) > 1  # byte-level BPE spreads the emoji over several tokens
    d = IncrementalDetokenizer(tokenizer, [], None)
    for t in ids[:-1]:
        d.add_token(t)
        assert d.delta(False) == ""
    d.add_token(ids[-1])
    assert d.delta(False) == "🎉"


def test_stop_string_is_cut_and_held_back(tokenizer):
    text = "The answer is forty-two. STOP here and more text"
    ids = tokenizer.encode(text)
    d, deltas, hit = stream(tokenizer, ids, stop=["STOP", "never"])
    assert hit == "STOP"
    assert "".join(deltas) == d.text == "The answer is forty-two. "
    assert not any("ST" in x for x in deltas)


def test_stop_string_spanning_tokens(tokenizer):
    text = "abc<|end of story|>def"
    ids = tokenizer.encode(text)
    d, deltas, hit = stream(tokenizer, ids, stop=["end of story"])
    assert hit == "end of story" and "".join(deltas) == "abc<|"


def test_special_tokens_are_skipped(tokenizer):
    ids = tokenizer.encode("hi") + [tokenizer.eos_token_id] + tokenizer.encode(" there")
    d, deltas, _ = stream(tokenizer, ids)
    assert "".join(deltas) == "hi there"
