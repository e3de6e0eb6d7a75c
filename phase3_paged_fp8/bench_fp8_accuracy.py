"""FP8 KV-cache accuracy on SmolLM2-135M: perplexity on the fixed ShareGPT slice and greedy agreement vs bf16.

    python -m phase3_paged_fp8.bench_fp8_accuracy                  # CPU, fp32 weights (~10 min on 2 cores)
    python -m phase3_paged_fp8.bench_fp8_accuracy --device cuda    # GPU, same measurement

The model computes in fp32 (weights from the GGUF); only the cache storage changes: fp32, bf16, FP8 e4m3 with
per-token-per-head scales. Every window is fed in chunks through the cache (common.perplexity), so attention reads
the keys/values as stored. Greedy agreement is measured two ways: teacher-forced (same context, same argmax?) over
every scored token, and free-running (continuations of ShareGPT prompts, position by position).
"""
from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm

from common.bench import write_result
from common.model_loader import load_model
from common.perplexity import evaluate, greedy_agreement, sharegpt_tokens
from phase3_paged_fp8.paged_cache import PagedKVCache, greedy_generate

CACHES = ("fp32", "bf16", "fp8")


def measure(num_tokens=4096, window=512, chunk=64, prompts=8, prompt_len=48, new_tokens=32, device="cpu",
            num_layers=None) -> dict:
    lm = load_model("smollm2-135m", device=device, dtype="fp32", num_layers=num_layers)
    ids = sharegpt_tokens(lm.tokenizer, num_tokens)
    res = {"model": lm.source, "num_tokens": num_tokens, "window": window, "chunk": chunk, "device": device,
           "weights_dtype": "fp32", "ppl": {}, "seconds": {}}
    evals = {}
    for name in tqdm(CACHES, desc="perplexity"):
        t0 = time.perf_counter()
        evals[name] = evaluate(lm.model, ids, window, chunk=chunk, cache_factory=lambda n, dt=name: PagedKVCache(
            lm.config, 1, n, block_size=16, dtype=dt, device=device))
        res["ppl"][name] = evals[name]["ppl"]
        res["seconds"][name] = time.perf_counter() - t0
    res["ppl_rel_diff_fp8_vs_bf16"] = res["ppl"]["fp8"] / res["ppl"]["bf16"] - 1
    res["ppl_rel_diff_bf16_vs_fp32"] = res["ppl"]["bf16"] / res["ppl"]["fp32"] - 1
    res["teacher_forced_agreement_fp8_vs_bf16"] = greedy_agreement(evals["fp8"], evals["bf16"])
    res["teacher_forced_agreement_bf16_vs_fp32"] = greedy_agreement(evals["bf16"], evals["fp32"])
    # free-running: the first prompt_len tokens of `prompts` ShareGPT windows, continued greedily
    starts = ids[: prompts * window].view(prompts, window)[:, :prompt_len].to(device)
    gen = {}
    for name in tqdm(("bf16", "fp8"), desc="greedy"):
        cache = PagedKVCache(lm.config, prompts, prompt_len + new_tokens + 1, dtype=name, device=device)
        gen[name] = greedy_generate(lm.model, starts, new_tokens, cache)
    same = gen["fp8"] == gen["bf16"]
    res["free_running_token_agreement_fp8_vs_bf16"] = same.float().mean().item()
    res["free_running_identical_sequences"] = int(same.all(dim=1).sum())
    res["free_running_prompts"] = prompts
    res["free_running_new_tokens"] = new_tokens
    res["free_running_first_divergence"] = [int((~r).nonzero()[0]) if (~r).any() else None for r in same]
    return res


def main(argv=None) -> int:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096, help="ShareGPT tokens scored")
    ap.add_argument("--window", type=int, default=512, help="perplexity window (tokens of context)")
    ap.add_argument("--chunk", type=int, default=64, help="tokens fed through the cache per forward")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    args = ap.parse_args(argv)
    res = measure(args.tokens, args.window, args.chunk, device=args.device)
    for k, v in res.items():
        print(f"{k}: {v}")
    write_result("phase3_paged_fp8", f"fp8_accuracy_{args.device}", res)
    return 0


if __name__ == "__main__":
    from common.cli import run_script

    run_script(main, "bench_fp8_accuracy")
