"""Tokenizer and chat template.

The GGUF carries its own tokenizer (BPE vocab, merges, special tokens, chat template); transformers converts it
into a fast tokenizer once, which we cache beside the GGUF. HF directories carry tokenizer.json directly.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

from common.assets import cache_dir


class Tokenizer:
    """A thin wrapper over an HF fast tokenizer: encode, decode, chat template, stop tokens."""

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def eos_token_id(self) -> int | None:
        return self.hf.eos_token_id

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (OpenAI's logprobs `bytes`). decode([id]) of a token that is part of a
        multi-byte character (an emoji's first byte) is U+FFFD; these are its real bytes, so the bytes of a
        sequence's tokens join to the UTF-8 of its text.

        NOTE: a byte-fallback token "<0xE2>" is that byte; in a byte-level BPE vocabulary (GPT-2's trick) each byte
        is stored as one printable character, mapped back here; a SentencePiece "\u2581" is a space; anything else
        (special tokens) is the UTF-8 of its text."""
        tok = self.hf.convert_ids_to_tokens(int(token_id))
        if tok is None:
            raise ValueError(f"token id {token_id} is outside the vocabulary ({self.vocab_size} tokens)")
        if tok in self._special:
            return tok.encode("utf-8")
        m = _BYTE_TOKEN.fullmatch(tok)
        if m:
            return bytes([int(m.group(1), 16)])
        tok = tok.replace("\u2581", " ")
        if self._byte_level:
            dec = _byte_decoder()
            return b"".join(bytes([dec[c]]) if c in dec else c.encode("utf-8") for c in tok)
        return tok.encode("utf-8")

    @functools.cached_property
    def _special(self) -> frozenset:
        return frozenset(self.hf.all_special_tokens) | frozenset(str(t) for t in self.hf.added_tokens_decoder.values())

    @functools.cached_property
    def _byte_level(self) -> bool:
        """Does the decoder map byte-level characters back to bytes (a ByteLevel step, alone or in a Sequence)?"""
        try:
            dec = json.loads(self.hf.backend_tokenizer.to_str()).get("decoder") or {}
        except AttributeError:  # a slow (Python) tokenizer: no backend to ask
            return False
        steps = dec.get("decoders", [dec]) if dec.get("type") == "Sequence" else [dec]
        return any(d.get("type") == "ByteLevel" for d in steps)

    def chat_ids(self, messages: list[dict] | str, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a chat (a list of {"role", "content"}; a string is one user message)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if not self.hf.chat_template:
            return self.encode("\n".join(m["content"] for m in messages), add_special_tokens=True)
        out = self.hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    def stop_token_ids(self) -> list[int]:
        """EOS plus the chat template's end-of-turn token where there is one (e.g. <|im_end|>)."""
        ids = {self.hf.eos_token_id} if self.hf.eos_token_id is not None else set()
        for tok in ("<|im_end|>", "<|eot_id|>", "</s>", "<|endoftext|>"):
            tid = self.hf.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.hf.unk_token_id and tid is not None:
                ids.add(tid)
        return sorted(ids)

    def __repr__(self) -> str:
        return f"Tokenizer({type(self.hf).__name__}, vocab={self.vocab_size}, eos={self.eos_token_id})"


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's table, inverted: the printable character each byte 0..255 is written as -> the byte. Bytes
    that are printable Latin-1 stand for themselves; the others take the code points from 256 up, in order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), 256)]
    extra = (b for b in range(256) if b not in keep)
    table = {chr(b): b for b in keep}
    table.update({chr(256 + i): b for i, b in enumerate(extra)})
    return table


def load_tokenizer_from_gguf(path: str | Path) -> Tokenizer:
    from transformers import AutoTokenizer

    path = Path(path)
    key = hashlib.sha1(f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    cached = cache_dir() / "tokenizers" / f"{path.stem}-{key}"
    if (cached / "tokenizer.json").exists():
        return Tokenizer(AutoTokenizer.from_pretrained(str(cached)))
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    try:
        tok.save_pretrained(str(cached))
    except OSError:
        pass  # a read-only cache only costs the conversion next time
    return Tokenizer(tok)


def load_tokenizer_from_dir(path: str | Path) -> Tokenizer:
    from transformers import AutoTokenizer

    return Tokenizer(AutoTokenizer.from_pretrained(str(path)))
