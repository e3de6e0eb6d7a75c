"""Offline throughput: `LLM.generate` on a batch job, continuous batching against the static-batching baseline,
plus B=1 decode latency and an HF transformers baseline in the same run.

    # the issue's workload: 1024 x (128 in, 128 out), TinyLlama-1.1B shapes, random bf16 weights, on an H100
    python -m phase4_scheduler.bench_offline --device cuda --model tinyllama-1.1b --random-weights \\
        --num-prompts 1024 --input-len 128 --output-len 128 --max-num-seqs 1024 --max-num-batched-tokens 16384 \\
        --kv-memory 0.3 --latency --compare-static --hf
    python -m phase4_scheduler.bench_offline --device cuda --model tinyllama-1.1b --random-weights --workload sharegpt \\
        --num-prompts 1000 --compare-static
    # a quick CPU run of the method (not a performance figure)
    python -m phase4_scheduler.bench_offline --model smollm2-135m --random-weights --num-layers 2 --num-prompts 16 \\
        --output-len 16

Random prompt tokens (fixed lengths) or ShareGPT lengths (first human turn / reference answer, vLLM's filter);
`ignore_eos` so every request produces exactly its output length. Sections, each guarded (one failure is recorded
and the others still run):
- continuous: LLM.generate over the whole job (after a warm-up job of the same shape with 4 output tokens, so
  Triton compilation/autotuning is not timed);
- static (--compare-static): the same job in static batches of --static-batch-size (default max_num_seqs); with
  fixed lengths every batch member finishes together, so the two differ mainly on ShareGPT-like lengths;
- latency (--latency): one request, --latency-prompt tokens in, --latency-tokens out; ms per output token between
  the first and the last token, as a streaming user sees it;
- hf (--hf): HF transformers' eager LlamaForCausalLM on the same weights, `generate` at --hf-batch sizes
  (--input-len in, --hf-tokens out): ms per decode step and output tokens/s of the whole generate.
Writes results/offline_<device>.json (or --name) with every section and a summary.
"""
from __future__ import annotations

import argparse
import gc
import time
import traceback

import torch

from common.bench import positive_int, write_result
from common.data import sharegpt_request_lengths
from common.gpu_monitor import GpuMonitor
from common.model_loader import load_model
from common.sampling import SamplingParams
from phase4_scheduler.engine import LLMEngine, freeze_heap
from phase4_scheduler.llm import LLM
from phase4_scheduler.static_batching import static_engine


def make_workload(args, vocab: int) -> tuple[list[list[int]], list[SamplingParams]]:
    g = torch.Generator().manual_seed(0)
    if args.workload == "fixed":
        lens = [(args.input_len, args.output_len)] * args.num_prompts
    else:
        lens = sharegpt_request_lengths(args.num_prompts, max_total=args.max_model_len)
    prompts = [torch.randint(100, vocab - 100, (p,), generator=g).tolist() for p, _ in lens]
    params = [SamplingParams(max_tokens=o, temperature=0.0, ignore_eos=True) for _, o in lens]
    return prompts, params


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def release() -> None:
    """After the caller dropped its engine (`del`): free its KV pool / CUDA graphs before the next section."""
    gc.unfreeze()  # frozen objects in reference cycles would never be collected
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run(llm: LLM, prompts, params, label: str) -> dict:
    _sync()
    with GpuMonitor() as mon:  # GPU busy share over the timed job (nvidia-smi; on CPU: a reason, no figure)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=True)
        _sync()
        dt = time.perf_counter() - t0
    n_out = sum(o.num_output_tokens for o in outs)
    n_in = sum(o.num_prompt_tokens for o in outs)
    assert all(o.num_output_tokens == p.max_tokens for o, p in zip(outs, params)), "a request stopped early"
    stats = llm.engine.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"], f"{label}: KV blocks leaked"
    row = {"label": label, "seconds": dt, "requests": len(outs), "prompt_tokens": n_in, "output_tokens": n_out,
           "output_tokens_per_s": n_out / dt, "total_tokens_per_s": (n_in + n_out) / dt,
           "requests_per_s": len(outs) / dt, "engine": stats, "gpu_utilization": mon.summary()}
    print(f"{label}: {len(outs)} requests in {dt:.2f} s -> {row['output_tokens_per_s']:,.0f} output tok/s "
          f"({stats['num_steps']} steps, preemptions {stats['num_preemptions']})")
    return row


def warm_up(llm: LLM, prompts, params) -> None:
    """The same job with at most 4 output tokens: compiles/autotunes the prefill and decode shapes it will use."""
    llm.generate(prompts, [SamplingParams(max_tokens=min(4, p.max_tokens), temperature=0.0, ignore_eos=True)
                           for p in params])


def decode_latency(loaded, args, engine_kw: dict) -> dict:
    """B=1: ms per output token between the first and last token of one request (after a warm-up request)."""
    eng = LLMEngine(loaded, max_num_seqs=1, max_model_len=args.latency_prompt + args.latency_tokens + 16,
                    kv_memory="1GiB" if loaded.device.type == "cuda" else None, **engine_kw)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(100, loaded.config.vocab_size - 100, (args.latency_prompt,), generator=g).tolist()
    params = SamplingParams(max_tokens=args.latency_tokens, temperature=0.0, ignore_eos=True)
    freeze_heap()
    marks = []
    for rid in ("warm", "timed"):
        eng.add_request(rid, prompt, params)
        marks = []
        while eng.has_unfinished():
            n = len(eng.step())  # a token is on the host once its output is: no extra sync (it would stop overlap)
            marks += [time.perf_counter()] * n
    del eng
    release()
    ms = (marks[-1] - marks[0]) / (len(marks) - 1) * 1e3
    row = {"prompt_tokens": args.latency_prompt, "output_tokens": len(marks), "ms_per_token": ms,
           "tokens_per_s": 1e3 / ms}
    print(f"latency: B=1, {args.latency_prompt} in / {len(marks)} out -> {ms:.2f} ms/token ({1e3 / ms:,.0f} tok/s)")
    return row


def build_hf(loaded):
    """HF transformers' LlamaForCausalLM (eager attention) with the engine's weights, same device and dtype."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(LlamaConfig(**loaded.config.to_hf_dict(), attn_implementation="eager"))
    hf = hf.to(device=loaded.device, dtype=loaded.dtype).eval()
    missing, unexpected = hf.load_state_dict(loaded.model.state_dict(), strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if loaded.config.tie_word_embeddings else set()):
        raise RuntimeError(f"HF model weights do not match: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()  # a tied lm_head is the embedding
    return hf


def hf_generate(hf, batch: int, prompt_len: int, tokens: int, vocab: int) -> dict:
    """HF generate at one batch size: ms per decode step = (t(n tokens) - t(1 token)) / (n - 1)."""
    from transformers import GenerationConfig

    hf.generation_config.eos_token_id = None
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(100, vocab - 100, (batch, prompt_len), generator=g).to(hf.device)

    def timed(k: int) -> float:
        cfg = GenerationConfig(max_new_tokens=k, min_new_tokens=k, do_sample=False, eos_token_id=None,
                               pad_token_id=0)
        _sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
        _sync()
        assert out.shape[1] == prompt_len + k, out.shape
        return time.perf_counter() - t0

    timed(min(4, tokens))
    t1, tn = timed(1), timed(tokens)
    step = (tn - t1) / max(1, tokens - 1)
    row = {"batch": batch, "prompt_tokens": prompt_len, "output_tokens": tokens, "ms_per_step": step * 1e3,
           "decode_tokens_per_s": batch / step, "output_tokens_per_s": batch * tokens / tn, "seconds": tn}
    print(f"hf eager: B={batch} -> {step * 1e3:.2f} ms/step, {row['output_tokens_per_s']:,.0f} output tok/s "
          f"(whole generate, {tokens} tokens)")
    return row


def guarded(name: str, fn, errors: dict):
    try:
        return fn()
    except Exception as e:  # one section failing must not lose the others
        traceback.print_exc()
        errors[name] = f"{type(e).__name__}: {e}"
        print(f"[{name}] FAILED: {errors[name]}")
        return None


def summarize(payload: dict) -> dict:
    rows = {r["label"]: r for r in payload["rows"]}
    s = {}
    if "continuous" in rows:
        s["continuous_output_tok_s"] = rows["continuous"]["output_tokens_per_s"]
    util = (rows.get("continuous") or {}).get("gpu_utilization") or {}
    if util.get("samples"):
        s["continuous_gpu_util_mean_pct"] = util["util_mean_pct"]
    if "static" in rows and "continuous" in rows:
        s["static_output_tok_s"] = rows["static"]["output_tokens_per_s"]
        s["continuous_over_static"] = s["continuous_output_tok_s"] / s["static_output_tok_s"]
    if payload.get("latency"):
        s["b1_ms_per_token"] = payload["latency"]["ms_per_token"]
    for r in payload.get("hf") or []:
        s[f"hf_b{r['batch']}_ms_per_step"] = r["ms_per_step"]
        s[f"hf_b{r['batch']}_output_tok_s"] = r["output_tokens_per_s"]
    hf1 = next((r for r in payload.get("hf") or [] if r["batch"] == 1), None)
    if hf1 and "b1_ms_per_token" in s:
        s["b1_speedup_vs_hf"] = hf1["ms_per_step"] / s["b1_ms_per_token"]
    hfmax = max(payload.get("hf") or [], key=lambda r: r["output_tokens_per_s"], default=None)
    if hfmax and "continuous_output_tok_s" in s:
        s["throughput_vs_best_hf"] = s["continuous_output_tok_s"] / hfmax["output_tokens_per_s"]
    return s


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--model", default="tinyllama-1.1b")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--num-layers", type=positive_int, default=None, help="truncate the model (quick CPU runs)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default=None, help="fp32 / bf16 / fp16 (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--workload", choices=["fixed", "sharegpt"], default="fixed")
    ap.add_argument("--num-prompts", type=positive_int, default=1024)
    ap.add_argument("--input-len", type=positive_int, default=128)
    ap.add_argument("--output-len", type=positive_int, default=128)
    ap.add_argument("--max-model-len", type=positive_int, default=2048)
    ap.add_argument("--max-num-seqs", type=positive_int, default=256, help="seats in the running batch (up to 1024+)")
    ap.add_argument("--max-num-batched-tokens", type=positive_int, default=8192, help="token budget per step (e.g. 16384)")
    ap.add_argument("--kv-memory", default=None,
                    help="KV pool: bytes ('40GiB') or a fraction of free GPU memory ('0.3'); default: engine's")
    ap.add_argument("--cuda-graph", choices=["auto", "on", "off"], default="auto", help="decode CUDA graphs")
    ap.add_argument("--fuse", action="store_true", help="the runner's fused kernels (fused_model.py)")
    ap.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto", help="KV pool dtype (fp8: phase 3's)")
    ap.add_argument("--overlap", choices=["auto", "on", "off"], default="auto",
                    help="overlapped decode (overlap.py; auto: on with CUDA graphs)")
    ap.add_argument("--no-detokenize", action="store_true", help="token ids only (no per-token text)")
    ap.add_argument("--no-warmup", action="store_true", help="time the first job cold (compilation included)")
    ap.add_argument("--compare-static", action="store_true", help="also run the static-batching baseline")
    ap.add_argument("--static-batch-size", type=positive_int, default=None, help="default: --max-num-seqs")
    ap.add_argument("--latency", action="store_true", help="also measure B=1 decode ms/token")
    ap.add_argument("--latency-prompt", type=positive_int, default=128)
    ap.add_argument("--latency-tokens", type=positive_int, default=256)
    ap.add_argument("--hf", action="store_true", help="also time HF transformers eager generate (--hf-batch)")
    ap.add_argument("--hf-batch", type=positive_int, nargs="+", default=[1, 64])
    ap.add_argument("--hf-tokens", type=positive_int, default=128)
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    kv_memory = args.kv_memory  # a string: the engine's parse_memory reads '0.3' as a fraction
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, random_weights=args.random_weights,
                        num_layers=args.num_layers)
    errors: dict[str, str] = {}
    payload = {"model": loaded.source, "dtype": str(loaded.dtype), "device": str(loaded.device),
               "gpu": torch.cuda.get_device_name() if loaded.device.type == "cuda" else None,
               "workload": vars(args), "rows": [], "latency": None, "hf": None, "errors": errors}
    if args.hf:  # before any engine: fuse=True consumes loaded.model
        def hf_section():
            hf = build_hf(loaded)
            rows = [hf_generate(hf, b, args.input_len, args.hf_tokens, loaded.config.vocab_size)
                    for b in args.hf_batch]
            del hf
            release()
            return rows
        payload["hf"] = guarded("hf", hf_section, errors)
    cuda_graph = {"auto": None, "on": True, "off": False}[args.cuda_graph]
    engine_kw = dict(cuda_graph=cuda_graph, fuse=args.fuse, detokenize=not args.no_detokenize,
                     overlap={"auto": None, "on": True, "off": False}[args.overlap],
                     kv_cache_dtype=args.kv_cache_dtype)
    kw = dict(max_model_len=args.max_model_len, kv_memory=kv_memory)
    prompts, params = make_workload(args, loaded.config.vocab_size)

    def continuous():
        llm = LLM(engine=LLMEngine(loaded, max_num_seqs=args.max_num_seqs,
                                   max_num_batched_tokens=args.max_num_batched_tokens, **kw, **engine_kw))
        engine_kw["fuse"] = False  # the model is fused now (loaded.model was replaced); later engines reuse it
        freeze_heap()  # no full-GC stalls while timing
        if not args.no_warmup:
            warm_up(llm, prompts, params)
        row = run(llm, prompts, params, "continuous")
        del llm
        release()
        return row

    def static():
        llm = LLM(engine=static_engine(loaded, args.static_batch_size or args.max_num_seqs, **kw, **engine_kw))
        engine_kw["fuse"] = False
        freeze_heap()
        if not args.no_warmup:
            n = args.static_batch_size or args.max_num_seqs
            warm_up(llm, prompts[:n], params[:n])
        row = run(llm, prompts, params, "static")
        del llm
        release()
        return row

    for name, fn in (("continuous", continuous), ("static", static)):
        if name == "static" and not args.compare_static:
            continue
        row = guarded(name, fn, errors)
        if row is not None:
            payload["rows"].append(row)
    if args.latency:
        payload["latency"] = guarded("latency", lambda: decode_latency(loaded, args, dict(engine_kw)), errors)
    payload["summary"] = summarize(payload)
    print("summary: " + ", ".join(f"{k}={v:,.2f}" for k, v in payload["summary"].items()))
    if errors:
        print("errors: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    write_result("phase4_scheduler", args.name or f"offline_{loaded.device.type}", payload)
    return payload


if __name__ == "__main__":
    from common.cli import run_script

    run_script(main, "bench_offline")
