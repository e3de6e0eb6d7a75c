"""Incremental detokenisation as properties over random token streams (hypothesis): byte-fallback pieces of emoji,
CJK and math symbols, accented words, leading spaces, special tokens, random vocabulary ids. The joined deltas are
`tokenizer.decode(ids)` exactly, a stream that ENDS inside a character included (its tail was dropped: the held-back
bytes got no next token); a stop string anywhere in the text, spanning tokens, cuts it exactly and no delta ever
carried any of it. In the engine: a running output's `text` is its deltas so far (it carried the held-back prefix
of a possible stop string, which a later step could cut, and ProcessEngine's text did not)."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.sampling import SamplingParams
from phase4_scheduler.detokenizer import IncrementalDetokenizer
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.tests.engine_helpers import prompts

SETTINGS = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PIECES = ["🎉", "你好世界", "naïve café", " 😀😃", "∑∫√", "\n\t", " Hello", "  two spaces", "ü", "—", "tok",
          "."]
SPECIAL = [0, 1, 2]  # <|endoftext|>, <|im_start|>, <|im_end|>: skipped in the text


def pool(tokenizer) -> list[int]:
    """Token ids worth streaming: every token of the pieces (many are single bytes of a longer character)."""
    return sorted({t for p in PIECES for t in tokenizer.encode(p)})


def token_streams(tokenizer):
    ids = st.one_of(st.sampled_from(pool(tokenizer)), st.sampled_from(SPECIAL), st.integers(3, 49151))
    return st.lists(ids, min_size=1, max_size=14)


def stream(tok, ids, prompt, stop=None):
    """(detokenizer, deltas, stop hit) as the engine drives it: a delta after every token, the last one final."""
    d = IncrementalDetokenizer(tok, prompt, stop)
    deltas, hit = [], None
    for i, t in enumerate(ids):
        hit = d.add_token(t)
        deltas.append(d.delta(finished=hit is not None or i == len(ids) - 1))
        if hit is not None:
            break
    return d, deltas, hit


PROMPTS = [[], [1, 520, 9531, 198], None]  # none, ending in "\n" after a special token, a plain sentence


def test_deltas_join_to_the_decode_of_any_stream(tokenizer):
    @SETTINGS
    @given(ids=token_streams(tokenizer), which=st.integers(0, 2))
    def check(ids, which):
        prompt = PROMPTS[which] if PROMPTS[which] is not None else tokenizer.encode("Say it:")
        d, deltas, hit = stream(tokenizer, ids, prompt)
        assert hit is None
        assert "".join(deltas) == d.text == tokenizer.decode(ids)

    check()


def test_a_stream_cut_inside_a_character_keeps_its_tail(tokenizer):
    """max_tokens stops after two of the emoji's three byte tokens: decode shows U+FFFD, and so must the text (the
    old detokenizer held the bytes back for a next token that never came: the final text was "ok")."""
    ids = tokenizer.encode("ok 🎉")[:-1]
    d, deltas, _ = stream(tokenizer, ids, [])
    assert "".join(deltas) == d.text == tokenizer.decode(ids) and d.text.endswith("\ufffd")


def test_stop_strings_anywhere_are_cut_exactly(tokenizer):
    @SETTINGS
    @given(ids=token_streams(tokenizer), data=st.data())
    def check(ids, data):
        full = tokenizer.decode(ids)
        clean = [i for i in range(len(full)) if full[i] != "\ufffd"]
        if not clean:
            return
        i = data.draw(st.sampled_from(clean))
        n = data.draw(st.integers(1, 6))
        stop = full[i:i + n]
        if "\ufffd" in stop:  # a replacement char is no text anyone stops on (and may be a byte still forming)
            return
        d, deltas, hit = stream(tokenizer, ids, [], [stop, "\x00never\x00"])
        assert hit == stop
        assert "".join(deltas) == d.text == full[:full.index(stop)]

    check()


@pytest.mark.parametrize("overlap", [False, True])
def test_engine_running_text_is_the_deltas_so_far(tiny, overlap):
    if tiny.tokenizer is None:
        pytest.skip("needs the SmolLM2 tokenizer")
    eng = LLMEngine(tiny, num_blocks=64, block_size=8, overlap=overlap)
    long_stop = "\x00" * 8  # never produced; holds back 7 characters of every running output
    for i, p in enumerate(prompts(3, seed=51)):
        eng.add_request(f"t{i}", p, SamplingParams(max_tokens=9, temperature=0, ignore_eos=True, stop=[long_stop]))
    joined, seen_holdback = {}, False
    while eng.has_unfinished():
        for o in eng.step():
            joined[o.request_id] = joined.get(o.request_id, "") + o.text_delta
            assert o.text == joined[o.request_id], (o.request_id, o.text, joined[o.request_id])
            seen_holdback |= not o.finished and o.output_token_ids and not o.text
            if o.finished:
                assert o.text == tiny.tokenizer.decode(o.output_token_ids)
    assert seen_holdback and len(joined) == 3


def test_engine_final_text_of_an_output_cut_inside_a_character(tiny):
    """A request forced (logit_bias) to emit the first byte token of an emoji until max_tokens: its text is what
    decode gives (U+FFFDs), not the empty string the held-back bytes left."""
    if tiny.tokenizer is None:
        pytest.skip("needs the SmolLM2 tokenizer")
    byte = tiny.tokenizer.encode("🎉")[0]
    eng = LLMEngine(tiny, num_blocks=16)
    eng.add_request("b", [5, 6, 7], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True,
                                                    logit_bias={byte: 100.0}))
    outs = []
    while eng.has_unfinished():
        outs += eng.step()
    assert outs[-1].output_token_ids == [byte] * 3
    assert "".join(o.text_delta for o in outs) == outs[-1].text == tiny.tokenizer.decode([byte] * 3) != ""
