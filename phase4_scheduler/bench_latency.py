"""B=1 decode latency of the engine: ms per output token after a 128-token prompt, against the bandwidth roofline.

    python -m phase4_scheduler.bench_latency --model tinyllama-1.1b --random-weights          # GPU
    python -m phase4_scheduler.bench_latency --variants eager graph graph+fused

Each variant builds an LLMEngine on the same weights and generates 256 tokens (ignore_eos) for one request, twice
(the first run warms up). Two figures per variant:
- engine ms/token: wall time between the first and the last token / 255: everything the user waits for (scheduler,
  block tables, host->device copies, the forward, sampling, detokenisation);
- forward ms: CUDA-event time of the runner's decode call alone (graph replay or eager forward), median over steps.
The roofline is the weight bytes read per token / the copy bandwidth measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from tqdm.auto import tqdm

from common import pdl
from phase4_scheduler.model_runner import DECODE_ENV
from common.bench import write_result
from common.model_loader import load_model
from common.sampling import SamplingParams


def copy_tb_s(nbytes: int = 2 * 2**30) -> float:
    """Device-to-device copy bandwidth (bytes read + written), median of 10."""
    a = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    times = []
    for _ in range(12):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return nbytes / statistics.median(times[2:]) / 1e9


class TimedRunner:
    """Wraps runner.execute: CUDA events around each decode-only call, read only after the run (no sync per step,
    so an overlapped engine keeps overlapping while it is timed)."""

    def __init__(self, runner):
        self.runner, self.inner, self.events = runner, runner.execute, []

    def __call__(self, token_ids, positions, q_lens, *rest, **kw):
        if len(q_lens) != 1 or (q_lens[0] if isinstance(q_lens, list) else int(q_lens[0])) != 1:
            return self.inner(token_ids, positions, q_lens, *rest, **kw)
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        out = self.inner(token_ids, positions, q_lens, *rest, **kw)
        e.record()
        self.events.append((s, e))
        return out

    def forward_ms(self) -> list[float]:
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in self.events]


def measure(loaded, variant: str, prompt_len: int, new_tokens: int) -> dict:
    """One variant; '+nopdl' builds (and captures) it with programmatic dependent launch off (common/pdl.py),
    '+unfused' with the unfused decode attention (rope_qk + write_kv_cache + paged_decode + reduce: 4 kernels a layer
    instead of phase4_scheduler/decode_attention.py's one), '+l2pfN' with an N MB budget of L2 prefetch before each
    GEMV's PDL wait (skinny_gemm.PREFETCH_ENV; '+l2pf' = 16 MB), '+nosiluepi' / '+siluepi' with SiLU-and-mul in the
    down projection's prologue / the gate_up GEMV's epilogue (fused_model.SILU_EPILOGUE_ENV), '+persist' /
    '+nopersist' with the persistent GEMV for every M == 1 projection / none (skinny_gemm.PERSISTENT_ENV), '+autotune'
    with the autotuner's M == 1 tiles instead of skinny_gemm.step_tile's (AUTOTUNE_ENV), '+torchargmax' with greedy
    sampling through torch.argmax instead of argmax.greedy_argmax (outside the decode graphs: with the default
    direct graph I/O their argmax is the kernel, in the graph), '+graphcopy' with the decode graphs' inputs copied in
    and their tokens copied out around the replay (cuda_graphs.GRAPH_IO_ENV=copy, the way before graph_io.py)."""
    from phase4_scheduler import sampler
    from phase4_scheduler.cuda_graphs import GRAPH_IO_ENV
    from phase4_scheduler.fused_model import SILU_EPILOGUE_ENV
    from phase4_scheduler.skinny_gemm import AUTOTUNE_ENV, PERSISTENT_ENV, PREFETCH_ENV
    parts = variant.split("+")
    l2pf = [p[4:] or "16" for p in parts if p.startswith("l2pf")]
    onoff = lambda name: "1" if name in parts else "0" if "no" + name in parts else None  # noqa: E731
    switches = {pdl.ENV: "0" if "nopdl" in parts else None, DECODE_ENV: "unfused" if "unfused" in parts else None,
                PREFETCH_ENV: l2pf[-1] if l2pf else "0", SILU_EPILOGUE_ENV: onoff("siluepi"),
                PERSISTENT_ENV: onoff("persist"), AUTOTUNE_ENV: onoff("autotune"),
                GRAPH_IO_ENV: "copy" if "graphcopy" in parts else None}
    prev = {k: os.environ.get(k) for k in switches}
    for k, v in switches.items():
        if v is not None:
            os.environ[k] = v
    kernel_argmax = sampler.greedy_argmax
    if "torchargmax" in parts:
        sampler.greedy_argmax = lambda logits: logits.argmax(-1)
    try:
        r = _measure(loaded, variant, prompt_len, new_tokens)
        r["decode_attention"] = "unfused" if "unfused" in parts else "fused"
        r["gemv_l2_prefetch_mb"] = float(l2pf[-1]) if l2pf else 0.0
        return r
    finally:
        sampler.greedy_argmax = kernel_argmax
        for k, v in prev.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def b1_engine(loaded, prompt_len: int, new_tokens: int, **engine_kw):
    """(engine, its TimedRunner, the fixed random prompt) for B=1 decode runs: the engine sized for one request of
    prompt_len + new_tokens, its runner's decode calls timed by CUDA events (TimedRunner)."""
    from phase4_scheduler.engine import LLMEngine

    eng = LLMEngine(loaded, max_num_seqs=8, max_model_len=prompt_len + new_tokens + 16, kv_memory="1GiB",
                    **engine_kw)
    timer = TimedRunner(eng.runner)
    eng.runner.execute = timer
    prompt = torch.randint(100, loaded.config.vocab_size - 100, (prompt_len,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    return eng, timer, prompt


def run_greedy(eng, request_id: str, prompt: list[int], new_tokens: int) -> dict:
    """One greedy request of new_tokens (EOS ignored) stepped to the end: the engine's ms per output token (wall
    time between the first and last outputs), the tokens, and each engine.step()'s wall time (ms)."""
    eng.add_request(request_id, prompt, SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True))
    stamps, tokens, step_ms = [], [], []
    while eng.has_unfinished():
        t = time.perf_counter()
        outs = eng.step()
        step_ms.append((time.perf_counter() - t) * 1e3)
        for out in outs:
            stamps.append(time.perf_counter())
            tokens += out.new_token_ids
    return {"ms_per_token": (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1e3, "tokens": tokens,
            "step_ms": step_ms}


def _measure(loaded, variant: str, prompt_len: int, new_tokens: int) -> dict:
    parts = variant.split("+")
    t0 = time.perf_counter()
    eng, timer, prompt = b1_engine(loaded, prompt_len, new_tokens, cuda_graph="graph" in parts,
                                   fuse="fused" in parts, overlap=False if "sync" in parts else None)
    setup_s = time.perf_counter() - t0
    rows = []
    for rep in range(2):
        timer.events.clear()
        overlapped0 = eng.counters["num_overlapped_steps"]
        run = run_greedy(eng, f"{variant}-{rep}", prompt, new_tokens)
        rows.append({"ms_per_token": run["ms_per_token"],
                     "forward_ms_median": statistics.median(timer.forward_ms()), "tokens": run["tokens"],
                     "overlapped_steps": eng.counters["num_overlapped_steps"] - overlapped0})
    best = rows[1]
    return {"variant": variant, "setup_s": setup_s, "engine_ms_per_token": best["ms_per_token"],
            "forward_ms_median": best["forward_ms_median"], "tokens_first_16": best["tokens"][:16],
            "overlap": eng.overlap, "overlapped_steps": best["overlapped_steps"],
            "pdl": "nopdl" not in parts and pdl.pdl_enabled(torch.empty(0, device=loaded.device)),
            "tokens": best["tokens"]}


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--model", default="tinyllama-1.1b")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--variants", nargs="+", default=["eager", "graph"],
                    help="any of eager, graph, fused, graph+fused; '+sync' turns overlapped decode off (it is on "
                         "with graphs), '+nopdl' programmatic dependent launch (on for Hopper), '+unfused' the 4-kernel "
                         "decode attention, '+l2pfN' an N MB L2-prefetch budget per GEMV ('+l2pf': 16), e.g. "
                         "graph+fused+sync graph+fused+nopdl")
    ap.add_argument("--name", default="latency_gpu")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_latency needs a CUDA GPU (it measures ms/token against the GPU's weight roofline)")
        raise SystemExit(1)
    ceiling = copy_tb_s()
    res = {"model": args.model, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
           "copy_tb_s": ceiling, "variants": []}
    for v in tqdm(args.variants, desc="variants"):
        loaded = load_model(args.model, device="cuda", dtype=torch.bfloat16, random_weights=args.random_weights)
        weight_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
        try:
            r = measure(loaded, v, args.prompt_len, args.new_tokens)
        except Exception as e:  # one broken variant must not cost the others
            r = {"variant": v, "error": f"{type(e).__name__}: {e}"}
        else:
            r["roofline_ms"] = weight_bytes / ceiling / 1e9
            r["pct_of_roofline"] = r["roofline_ms"] / r["engine_ms_per_token"]
        res["variants"].append(r)
        print({k: (round(x, 3) if isinstance(x, float) else x) for k, x in r.items() if k != "tokens"})
        write_result("phase4_scheduler", args.name, res)
        del loaded
        torch.cuda.empty_cache()
    ok = [r for r in res["variants"] if "tokens" in r]
    res["tokens_agree_with_first"] = [sum(a == b for a, b in zip(ok[0]["tokens"], r["tokens"])) / len(r["tokens"])
                                      for r in ok]
    write_result("phase4_scheduler", args.name, res)
    return res


if __name__ == "__main__":
    from common.cli import run_script

    run_script(main, "bench_latency")
