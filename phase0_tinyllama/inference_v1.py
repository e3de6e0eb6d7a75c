"""Inference v1: the same engine with a KV cache. Each step feeds ONE new token and reuses cached keys/values.

Prefill runs the prompt once and fills the cache; each decode step then costs one token-pass plus attention over
the cache, so n tokens cost O(n) token-passes instead of O(n^2). This is the engine `titan generate` uses until
phase 4's scheduler takes over (it is the "engine.generate" entry of common/artifacts.py).

    python -m phase0_tinyllama.inference_v1 --prompt "What is the capital of France?"
"""
from __future__ import annotations

import functools
from collections.abc import Iterator

import torch

from common.cuda_graph import GraphedDecodeStep
from common.kv_cache import StaticKVCache
from common.sampling import SamplingParams, check_prompt_fits, make_generator, sample
from phase0_tinyllama import inference_v0


@torch.inference_mode()
def stream_kv_cache(model, input_ids: torch.Tensor, params: SamplingParams, cache=None,
                    cuda_graph: bool = False) -> Iterator[torch.Tensor]:
    """Yield one token per sequence per step ([B]); input_ids: [B, S]. `cache`: an empty cache to fill (e.g. a paged
    one); by default the model makes its own (contiguous KV for Llama, latent for MLA). `cuda_graph=True` (CUDA,
    Llama family) captures the decode step once and replays it per token (common/cuda_graph.py)."""
    b, s = input_ids.shape
    check_prompt_fits(s, params.max_tokens, model.config.max_position_embeddings)
    dtype = next(model.parameters()).dtype
    if cuda_graph:
        if cache is not None:
            raise ValueError("cuda_graph=True builds its own StaticKVCache: do not pass a cache")
        if input_ids.device.type != "cuda":
            raise RuntimeError(f"cuda_graph=True needs a CUDA device, the input is on {input_ids.device}")
        cache = StaticKVCache(model.config, b, s + params.max_tokens, dtype=dtype, device=input_ids.device)
    elif cache is None:
        cache = model.make_cache(b, s + params.max_tokens, dtype=dtype, device=input_ids.device)
    gen = make_generator(params, input_ids.device)
    logits = model(input_ids, cache=cache, last_only=True)[:, -1]  # prefill: [B, V]
    if cuda_graph:
        step = GraphedDecodeStep(model, cache, b)
    else:
        def step(tok):
            return model(tok[:, None], cache=cache)[:, -1]
    for i in range(params.max_tokens):
        tok = sample(logits, params, gen)
        yield tok
        if i + 1 < params.max_tokens:
            logits = step(tok)  # decode: one token per sequence -> [B, V]


def generate(model, input_ids: torch.Tensor, params: SamplingParams, cache=None) -> torch.Tensor:
    stream = stream_kv_cache if cache is None else functools.partial(stream_kv_cache, cache=cache)
    return inference_v0.generate(model, input_ids, params, stream=stream)


if __name__ == "__main__":
    from common.cli import run_script

    run_script(lambda: inference_v0.main(stream=stream_kv_cache, name="v1 (KV cache)"), "inference_v1")
