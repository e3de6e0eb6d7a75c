"""Tokenizer and chat template.

The GGUF carries its own tokenizer (BPE vocab, merges, special tokens, chat template); transformers converts it
into a fast tokenizer once, which we cache beside the GGUF. HF directories carry tokenizer.json directly.
"""
from __future__ import annotations

import hashlib
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
