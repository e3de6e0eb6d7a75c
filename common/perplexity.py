"""Perplexity and greedy agreement of a model over a fixed token stream, optionally through a KV cache.

    ids = sharegpt_tokens(lm.tokenizer, num_tokens=4096)           # the fixed ShareGPT slice, in file order
    perplexity(lm.model, ids, window=512)                          # full-sequence forward, no cache
    perplexity(lm.model, ids, window=512, chunk=64,
               cache_factory=lambda n: PagedKVCache(lm.config, 1, n, dtype="fp8"))   # through an FP8 cache

NOTE: with a cache, every window is fed in chunks of `chunk` tokens: each chunk's queries attend to the earlier
chunks' keys *as the cache stores them* (quantised, for an FP8 cache), which is what decoding sees. chunk=1 is pure
token-by-token decoding (exact but slow on a CPU); a few dozen tokens per chunk exercises the same cached-prefix
path at a fraction of the cost. Windows do not overlap: tokens are scored with at most `window - 1` of context.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch


def sharegpt_tokens(tokenizer, num_tokens: int, skip_conversations: int = 0) -> torch.Tensor:
    """The first `num_tokens` tokens of ShareGPT's first exchanges (human prompt + reply), in file order: [N]."""
    from common.data import first_exchange, iter_sharegpt
    ids: list[int] = []
    for i, conv in enumerate(iter_sharegpt()):
        pair = first_exchange(conv) if i >= skip_conversations else None
        if pair is None:
            continue
        ids += tokenizer.encode(pair[0] + "\n\n" + pair[1] + "\n\n")
        if len(ids) >= num_tokens:
            return torch.tensor(ids[:num_tokens], dtype=torch.long)
    raise ValueError(f"ShareGPT has fewer than {num_tokens} tokens of first exchanges")


@torch.no_grad()
def window_logits(model, ids: torch.Tensor, cache_factory: Callable | None = None,
                  chunk: int | None = None) -> torch.Tensor:
    """Logits [S, V] of one window ids [S] (float32), in one forward or chunk by chunk through a fresh cache."""
    if cache_factory is None:
        return model(ids[None])[0].float()
    cache = cache_factory(len(ids))
    step = chunk or len(ids)
    return torch.cat([model(ids[None, i:i + step], cache=cache)[0].float() for i in range(0, len(ids), step)])


@torch.no_grad()
def evaluate(model, token_ids: Sequence[int] | torch.Tensor, window: int, cache_factory: Callable | None = None,
             chunk: int | None = None) -> dict:
    """Sum of next-token NLL, the number of scored tokens, and the greedy (argmax) prediction at each of them."""
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    if ids.dim() != 1 or len(ids) < 2:
        raise ValueError(f"token_ids must be a 1-D sequence of at least 2 tokens, got shape {tuple(ids.shape)}")
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    device = next(model.parameters()).device
    nll, count, argmax = 0.0, 0, []
    for start in range(0, len(ids) - 1, window):
        w = ids[start:start + window].to(device)
        if len(w) < 2:
            break
        logits = window_logits(model, w, cache_factory, chunk)[:-1]  # [S-1, V] predicts w[1:]
        nll += torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum").item()
        count += len(w) - 1
        argmax.append(logits.argmax(-1).cpu())
    return {"nll": nll, "num_tokens": count, "ppl": math.exp(nll / count), "argmax": torch.cat(argmax)}


def perplexity(model, token_ids: Sequence[int] | torch.Tensor, window: int, cache_factory: Callable | None = None,
               chunk: int | None = None) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of `window` tokens (see the module NOTE)."""
    return evaluate(model, token_ids, window, cache_factory, chunk)["ppl"]


def greedy_agreement(a: dict, b: dict) -> float:
    """Fraction of scored positions where two `evaluate` results predict the same next token."""
    return (a["argmax"] == b["argmax"]).float().mean().item()
