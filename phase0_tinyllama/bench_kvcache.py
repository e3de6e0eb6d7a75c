"""Benchmark: generation with and without the KV cache (inference_v1 vs inference_v0) at 512 new tokens.

    python -m phase0_tinyllama.bench_kvcache --device cpu                  # real SmolLM2 weights
    python -m phase0_tinyllama.bench_kvcache --device cuda --batch 1 64 --random-weights --model tinyllama-1.1b

On CUDA the KV-cache run is timed eagerly (one Python-launched forward per token), with the decode step captured in
a CUDA graph (common/cuda_graph.py; the capture happens inside the timed region). The no-cache run cannot be
captured: its input grows every step. `speedup` uses the fastest KV-cache run.

Without a cache, step t re-runs the whole sequence (prompt + t tokens): the work grows as O(n^2). With it each step
runs one token. Both produce the same tokens (checked here: greedy, ignore_eos).
"""
from __future__ import annotations

import argparse
import functools
import time

import torch
from tqdm.auto import tqdm

from common.bench import positive_int, write_result
from common.model_loader import load_model
from common.sampling import SamplingParams
from phase0_tinyllama.inference_v0 import stream_no_cache
from phase0_tinyllama.inference_v1 import stream_kv_cache


def timed_generation(stream, model, ids: torch.Tensor, n: int, desc: str) -> tuple[float, list[list[int]]]:
    """Wall time of one whole generation of n tokens (prefill included), and its tokens [B][n]."""
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    toks = [t for t in tqdm(stream(model, ids, params), total=n, desc=desc, leave=False, mininterval=2)]
    sync()
    return time.perf_counter() - t0, torch.stack(toks, 1).tolist()


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: fp32 on CPU, bf16 on CUDA")
    ap.add_argument("--tokens", type=positive_int, default=512, help="new tokens to generate (default: %(default)s)")
    ap.add_argument("--prompt-len", type=positive_int, default=128, help="prompt tokens (default: %(default)s, as in the GPU runs)")
    ap.add_argument("--batch", type=positive_int, nargs="+", default=[1])
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--no-cuda-graph", action="store_true", help="on CUDA, skip the CUDA-graph KV-cache runs")
    ap.add_argument("--name", default=None, help="results file stem (default: kvcache_<device>)")
    args = ap.parse_args(argv)
    lm = load_model(args.model, device=args.device, dtype=args.dtype, random_weights=args.random_weights)
    rows = []
    graphs = lm.device.type == "cuda" and not args.no_cuda_graph
    for b in args.batch:
        ids = torch.randint(100, lm.config.vocab_size - 100, (b, args.prompt_len),
                            generator=torch.Generator().manual_seed(b)).to(lm.device)
        timed_generation(stream_kv_cache, lm.model, ids, 8, "warm-up")  # kernels, allocator, caches
        t_eager, out_cache = timed_generation(stream_kv_cache, lm.model, ids, args.tokens, f"B={b} KV cache")
        t_none, out_none = timed_generation(stream_no_cache, lm.model, ids, args.tokens, f"B={b} no cache")
        agree = sum(x == y for r1, r2 in zip(out_cache, out_none) for x, y in zip(r1, r2)) / (b * args.tokens)
        row = {"batch": b, "prompt_len": args.prompt_len, "new_tokens": args.tokens,
               "seconds_kv_cache_eager": t_eager, "seconds_no_cache": t_none, "speedup_eager": t_none / t_eager,
               "tokens_per_s_no_cache": b * args.tokens / t_none, "greedy_agreement": agree}
        t_cache = t_eager
        for tag, on in (("graph", graphs),):
            if not on:
                continue
            fn = functools.partial(stream_kv_cache, cuda_graph=True)
            timed_generation(fn, lm.model, ids, 8, f"warm-up ({tag})")
            t, out = timed_generation(fn, lm.model, ids, args.tokens, f"B={b} KV cache + {tag}")
            row[f"seconds_kv_cache_{tag}"] = t
            row[f"speedup_{tag}"] = t_none / t
            row[f"greedy_agreement_{tag}"] = sum(x == y for r1, r2 in zip(out, out_none)
                                                 for x, y in zip(r1, r2)) / (b * args.tokens)
            t_cache = min(t_cache, t)
        row.update(seconds_kv_cache=t_cache, speedup=t_none / t_cache, tokens_per_s_kv_cache=b * args.tokens / t_cache)
        rows.append(row)
        extra = f", best with CUDA graph {t_cache:.2f} s" if graphs else ""
        print(f"B={b}: KV cache {t_eager:.2f} s{extra}, no cache {t_none:.2f} s -> {row['speedup']:.1f}x "
              f"(greedy agreement {agree:.3f})")
        write_result("phase0_tinyllama", args.name or f"kvcache_{lm.device.type}",  # a killed run keeps its rows
                     {"model": lm.source, "dtype": str(lm.dtype), "cuda_graph": graphs, "rows": rows})
    payload = {"model": lm.source, "dtype": str(lm.dtype), "cuda_graph": graphs, "rows": rows}
    write_result("phase0_tinyllama", args.name or f"kvcache_{lm.device.type}", payload)
    return payload


if __name__ == "__main__":
    from common.cli import run_script

    run_script(main, "bench_kvcache")
