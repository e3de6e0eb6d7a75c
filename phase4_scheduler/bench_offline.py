"""Offline throughput: `LLM.generate` on a batch job, continuous batching against the static-batching baseline.

    python -m phase4_scheduler.bench_offline --device cuda --model tinyllama-1.1b --random-weights \
        --num-prompts 1024 --input-len 128 --output-len 128          # the issue's 1024 x (128 in, 128 out)
    python -m phase4_scheduler.bench_offline --workload sharegpt --num-prompts 1000 --compare-static

Random prompt tokens (fixed lengths) or ShareGPT lengths (first human turn / reference answer, vLLM's filter);
`ignore_eos` so every request produces exactly its output length. Writes results/offline_<device>.json.
"""
from __future__ import annotations

import argparse
import time

import torch

from common.bench import write_result
from common.data import sharegpt_request_lengths
from common.model_loader import load_model
from common.sampling import SamplingParams
from phase4_scheduler.llm import LLM
from phase4_scheduler.static_batching import static_llm
from phase4_scheduler.engine import LLMEngine


def make_workload(args, vocab: int) -> tuple[list[list[int]], list[SamplingParams]]:
    g = torch.Generator().manual_seed(0)
    if args.workload == "fixed":
        lens = [(args.input_len, args.output_len)] * args.num_prompts
    else:
        lens = sharegpt_request_lengths(args.num_prompts, max_total=args.max_model_len)
    prompts = [torch.randint(100, vocab - 100, (p,), generator=g).tolist() for p, _ in lens]
    params = [SamplingParams(max_tokens=o, temperature=0.0, ignore_eos=True) for _, o in lens]
    return prompts, params


def run(llm: LLM, prompts, params, label: str) -> dict:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=True)
    sync()
    dt = time.perf_counter() - t0
    n_out = sum(o.num_output_tokens for o in outs)
    n_in = sum(o.num_prompt_tokens for o in outs)
    assert all(o.num_output_tokens == p.max_tokens for o, p in zip(outs, params)), "a request stopped early"
    row = {"label": label, "seconds": dt, "requests": len(outs), "prompt_tokens": n_in, "output_tokens": n_out,
           "output_tokens_per_s": n_out / dt, "total_tokens_per_s": (n_in + n_out) / dt,
           "requests_per_s": len(outs) / dt, "engine": llm.engine.stats()}
    print(f"{label}: {len(outs)} requests in {dt:.2f} s -> {row['output_tokens_per_s']:,.0f} output tok/s")
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tinyllama-1.1b")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--num-layers", type=int, default=None, help="truncate the model (quick CPU runs)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workload", choices=["fixed", "sharegpt"], default="fixed")
    ap.add_argument("--num-prompts", type=int, default=1024)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--kv-memory", default=None, help="KV pool size, e.g. 40GiB or 0.8 (fraction of free memory)")
    ap.add_argument("--compare-static", action="store_true", help="also run the static-batching baseline")
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    loaded = load_model(args.model, device=args.device, random_weights=args.random_weights,
                        num_layers=args.num_layers)
    kw = dict(max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens, kv_memory=args.kv_memory)
    prompts, params = make_workload(args, loaded.config.vocab_size)
    rows = [run(LLM(engine=LLMEngine(loaded, **kw)), prompts, params, "continuous")]
    if args.compare_static:
        kw.pop("max_num_seqs")
        kw.pop("max_num_batched_tokens")
        rows.append(run(static_llm(loaded, args.max_num_seqs, **kw), prompts, params, "static"))
        print(f"continuous / static: {rows[0]['output_tokens_per_s'] / rows[1]['output_tokens_per_s']:.2f}x")
    payload = {"model": loaded.source, "dtype": str(loaded.dtype), "workload": vars(args), "rows": rows}
    write_result("phase4_scheduler", args.name or f"offline_{loaded.device.type}", payload)
    return payload


if __name__ == "__main__":
    main()
