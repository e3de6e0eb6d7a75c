"""Incremental detokenisation: text deltas token by token, never a broken UTF-8 character, stop strings cut off.

Decoding a single token is wrong in general: byte-level BPE splits one character (an emoji, a CJK ideograph) over
several tokens, and a token's leading space depends on what precedes it. So we decode a short window twice — the
tokens already turned into text (`prefix_offset:read_offset`) and the same window plus the new tokens — and emit the
difference, but only once it does not end in U+FFFD (an incomplete byte sequence: wait for the next token).

NOTE (stop strings): while a request runs, the last `max(len(stop)) - 1` characters are held back, since they might
be the start of a stop string that the next token completes; a stop string found in the text ends the request and
is removed together with everything after it, as OpenAI's API does.

NOTE (the end): tokens whose text still ends in an incomplete byte sequence when the request finishes (max_tokens
cut an emoji in half, a stray byte token last) will get no next token; `delta(finished=True)` decodes them as they
are, U+FFFD included, so the final text is `tokenizer.decode(output ids)` and not that minus its tail.

NOTE (cost): this runs for every stream on every step, so a decode goes straight to the Rust `tokenizers.Tokenizer`
behind an HF fast tokenizer when there is one (`fast_decoder`): HF's `decode` wraps the same call in ~10 us of
Python per call, two calls per token, which at 256 streams was most of the detokeniser's ~1.7 ms per step. The
direct call is checked against `tokenizer.decode` on probe ids once per tokenizer and used only if they agree.
"""
from __future__ import annotations

import weakref

CONTEXT_TOKENS = 5  # prompt tokens decoded as left context (for the first output token's spacing)
_DECODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_PROBE = ([0, 1, 2, 3, 100, 2000, 30000], [72, 105, 32, 240, 159, 153, 130], [5, 17, 233, 9999, 40000, 1])


def fast_decoder(tokenizer, skip_special_tokens: bool = True):
    """`ids -> str` equal to tokenizer.decode(ids, skip_special_tokens): the Rust backend's decode where the
    tokenizer wraps one (common.tokenizer.Tokenizer over an HF fast tokenizer) and agrees on probe ids, else
    tokenizer.decode itself. Cached per tokenizer."""
    try:
        cached = _DECODERS.get(tokenizer)
    except TypeError:  # not weak-referenceable: no cache
        cached = None
    if cached is not None and skip_special_tokens in cached:
        return cached[skip_special_tokens]
    slow = lambda ids: tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)  # noqa: E731
    fn = slow
    backend = getattr(getattr(tokenizer, "hf", None), "_tokenizer", None)
    if backend is not None and hasattr(backend, "decode"):
        fast = lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)  # noqa: E731
        try:
            vocab = tokenizer.vocab_size
            probes = [[t % vocab for t in p] for p in _PROBE]
            if all(fast(p) == slow(p) for p in probes):
                fn = fast
        except Exception:  # noqa: BLE001 - any doubt: keep the wrapper's decode
            fn = slow
    try:
        _DECODERS.setdefault(tokenizer, {})[skip_special_tokens] = fn
    except TypeError:
        pass
    return fn


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], stop: list[str] | None = None,
                 skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.stop = list(stop or [])
        self.skip_special_tokens = skip_special_tokens
        self.tokens = list(prompt_token_ids[-CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.tokens)
        self.text = ""  # decoded output text so far (cut at a stop string once one is found)
        self.num_emitted_chars = 0
        self.stopped = False  # a stop string was found (the text ends before it; nothing is added after)
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self._decode = fast_decoder(tokenizer, skip_special_tokens)

    def add_token(self, token_id: int) -> str | None:
        """Append one token; returns the stop string it completed, if any (the text is then cut before it)."""
        self.tokens.append(token_id)
        return self._take_text(final=False)

    def _take_text(self, final: bool) -> str | None:
        """Append the text of the tokens after read_offset (decoded with the ones before it as context) and look
        for a stop string in it; returns the stop string found, if any. Nothing while that text is empty (a special
        token) or, unless final, ends in half of a multi-byte character (U+FFFD)."""
        prefix_text = self._decode(self.tokens[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.tokens[self.prefix_offset:])
        if len(new_text) <= len(prefix_text) or (new_text.endswith("\ufffd") and not final):
            return None
        start = max(0, len(self.text) - self.holdback)  # a stop string may straddle earlier text
        self.text += new_text[len(prefix_text):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
        return self._find_stop(start)

    def _find_stop(self, start: int) -> str | None:
        hits = [(i, s) for s in self.stop if (i := self.text.find(s, start)) >= 0]
        if not hits:
            return None
        i, s = min(hits)
        self.text = self.text[:i]
        self.stopped = True
        return s

    def _flush(self) -> None:
        """At the end: the text of tokens held back for an incomplete UTF-8 sequence, as decode gives it (U+FFFD)."""
        if not self.stopped and self.read_offset < len(self.tokens):
            self._take_text(final=True)

    def delta(self, finished: bool) -> str:
        """New text since the last call (holding back a possible stop-string prefix unless finished)."""
        if finished:
            self._flush()
        end = len(self.text) if finished else max(self.num_emitted_chars, len(self.text) - self.holdback)
        out = self.text[self.num_emitted_chars:end]
        self.num_emitted_chars = end
        return out

    def __repr__(self) -> str:
        return f"IncrementalDetokenizer(tokens={len(self.tokens)}, text={self.text!r:.40}, stop={self.stop})"
