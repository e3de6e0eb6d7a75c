"""Serving benchmark: ShareGPT prompts against an OpenAI-compatible server, Poisson arrivals, streaming.

    titan serve --model tinyllama-1.1b --random-weights &            # or any OpenAI-compatible server (vLLM too)
    python -m phase4_scheduler.bench_serve --base-url http://127.0.0.1:8000 --num-prompts 1000 --request-rate 16
    python -m phase4_scheduler.bench_serve --launch --model smollm2-135m --random-weights --num-layers 2 \\
        --num-prompts 20 --request-rate inf                           # self-contained (starts the server in-process)

vLLM's method: the first human turn is the prompt, the reference answer's token count is max_tokens (ignore_eos),
pairs filtered to prompt <= 1024 and prompt + output <= 2048 tokens. Per request: TTFT (time to first token),
ITL (gaps between streamed chunks), TPOT ((end - first token) / (tokens - 1)), end-to-end latency. Reports
p50/p90/p99, request and token throughput; writes results/<name>.json and a latency-CDF plot.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from common.bench import positive_float, positive_int, results_dir, write_result


def sharegpt_requests(n: int, tokenizer, max_prompt: int = 1024, max_total: int = 2048, seed: int = 0):
    """[(prompt_text, prompt_len, output_len)]: first human turn and the reference answer's length, vLLM's filter."""
    from common.data import iter_sharegpt

    out = []
    for rec in iter_sharegpt():
        conv = rec.get("conversations") or []
        if len(conv) < 2 or conv[0].get("from") != "human":
            continue
        prompt, answer = conv[0]["value"], conv[1]["value"]
        p, o = len(tokenizer.encode(prompt)), len(tokenizer.encode(answer))
        if p < 4 or o < 4 or p > max_prompt or p + o > max_total:
            continue
        out.append((prompt, p, o))
        if len(out) == n:
            break
    random.Random(seed).shuffle(out)
    return out


async def one_request(client, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    chunks, n_out, err = [], 0, None
    try:
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                return {"ok": False, "error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                msg = json.loads(line[6:])
                if msg.get("choices") and msg["choices"][0].get("text"):
                    chunks.append(time.perf_counter() - t0)
                if msg.get("usage"):
                    n_out = msg["usage"]["completion_tokens"]
    except Exception as e:  # a failed request is counted, never silently dropped
        err = f"{type(e).__name__}: {e}"
    e2e = time.perf_counter() - t0
    if err or not chunks:
        return {"ok": False, "error": err or "no tokens streamed"}
    return {"ok": True, "ttft": chunks[0], "e2e": e2e, "output_tokens": n_out,
            "itl": np.diff(chunks).tolist(), "tpot": (e2e - chunks[0]) / max(1, n_out - 1)}


async def run_load(base_url: str, model: str, reqs, rate: float, max_concurrency: int | None, seed: int) -> tuple:
    import httpx
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    bar = tqdm(total=len(reqs), desc="requests")
    limits = httpx.Limits(max_connections=max_concurrency or len(reqs) + 8)

    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as client:
        async def fire(prompt, _p, o):
            async with (sem or nullcontext()):
                res = await one_request(client, base_url + "/v1/completions", model, prompt, o)
            bar.update(1)
            return res

        tasks = []
        t0 = time.perf_counter()
        for prompt, p, o in reqs:
            tasks.append(asyncio.create_task(fire(prompt, p, o)))
            if rate != float("inf"):
                await asyncio.sleep(rng.exponential(1.0 / rate))
        results = await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    bar.close()
    return results, wall


def summarize(results, reqs, wall: float) -> dict:
    ok = [r for r in results if r["ok"]]
    pct = lambda xs: {f"p{q}": float(np.percentile(xs, q)) * 1e3 for q in (50, 90, 99)} if xs else {}  # noqa: E731
    n_out = sum(r["output_tokens"] for r in ok)
    return {"completed": len(ok), "failed": len(results) - len(ok),
            "errors": sorted({r["error"] for r in results if not r["ok"]})[:5],
            "duration_s": wall, "request_throughput": len(ok) / wall, "output_token_throughput": n_out / wall,
            "total_input_tokens": sum(p for _, p, _ in reqs), "total_output_tokens": n_out,
            "ttft_ms": pct([r["ttft"] for r in ok]), "tpot_ms": pct([r["tpot"] for r in ok]),
            "itl_ms": pct([x for r in ok for x in r["itl"]]), "e2e_ms": pct([r["e2e"] for r in ok]),
            "samples": {"ttft_s": [r["ttft"] for r in ok], "tpot_s": [r["tpot"] for r in ok]}}


def plot_cdfs(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for ax, key, label in ((axes[0], "ttft_s", "TTFT (ms)"), (axes[1], "tpot_s", "TPOT (ms)")):
        xs = np.sort(np.array(summary["samples"][key]) * 1e3)
        ax.plot(xs, np.arange(1, len(xs) + 1) / max(1, len(xs)))
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="smollm2-135m", help="the served model name (and with --launch, the model)")
    ap.add_argument("--num-prompts", type=positive_int, default=1000)
    ap.add_argument("--request-rate", type=positive_float, default=float("inf"), help="Poisson rate, req/s (inf: all at once)")
    ap.add_argument("--max-concurrency", type=positive_int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--launch", action="store_true", help="start titan serve in this process first")
    ap.add_argument("--random-weights", action="store_true", help="with --launch")
    ap.add_argument("--num-layers", type=positive_int, default=None, help="with --launch: truncate the model")
    ap.add_argument("--device", default="auto", help="with --launch")
    ap.add_argument("--name", default=None, help="results file stem (default: serve_<rate>)")
    args = ap.parse_args(argv)
    from common import assets
    from common.tokenizer import load_tokenizer_from_gguf

    reqs = sharegpt_requests(args.num_prompts, load_tokenizer_from_gguf(assets.require("smollm2-gguf")),
                             seed=args.seed)
    server = nullcontext(args.base_url)
    if not args.launch:  # 1,000 refused connections say less than one line
        import httpx

        try:
            httpx.get(f"{args.base_url}/v1/models", timeout=10)
        except httpx.HTTPError as e:
            raise SystemExit(f"bench_serve: no server answers at {args.base_url} ({type(e).__name__}: {e}). Start one "
                             "(`titan serve --model smollm2-135m &`, or any OpenAI-compatible server) and pass "
                             "--base-url, or add --launch to start ours in this process.") from None
    if args.launch:
        from phase4_scheduler.async_engine import AsyncEngine
        from phase4_scheduler.launch import BackgroundServer
        from phase4_scheduler.server import create_app

        engine = AsyncEngine.from_model(args.model, device=args.device, random_weights=args.random_weights,
                                        num_layers=args.num_layers)
        server = BackgroundServer(create_app(engine))
    with server as base_url:
        results, wall = asyncio.run(run_load(base_url, args.model, reqs, args.request_rate, args.max_concurrency,
                                             args.seed))
    summary = summarize(results, reqs, wall)
    name = args.name or f"serve_{'inf' if args.request_rate == float('inf') else f'{args.request_rate:g}'}"
    plot_cdfs(summary, results_dir("phase4_scheduler") / f"{name}.png",
              f"{args.model}: {args.num_prompts} ShareGPT requests at {args.request_rate:g} req/s")
    print(f"{summary['completed']} ok, {summary['failed']} failed in {wall:.1f} s: "
          f"{summary['request_throughput']:.2f} req/s, {summary['output_token_throughput']:,.0f} out tok/s; "
          f"TTFT p50 {summary['ttft_ms'].get('p50', float('nan')):.0f} ms, "
          f"TPOT p50 {summary['tpot_ms'].get('p50', float('nan')):.1f} ms")
    write_result("phase4_scheduler", name, {"args": vars(args), **summary})
    return summary


if __name__ == "__main__":
    from common.cli import run_script

    run_script(main, "bench_serve")
