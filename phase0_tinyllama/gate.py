"""`make phase0`: the acceptance criteria of Phase 0, run live (GPU ones skipped on a CPU machine, quoting the
recorded H100 run from results/)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from common.gate import Criterion, passed, recorded_result
from common.oracle import CHAT_PROMPTS as PROMPTS, hf_greedy, ours_greedy

TITLE = "Phase 0 — Roofline in practice"
PHASE = "phase0_tinyllama"
_state: dict = {}


def _models():
    if not _state:
        from common.model_loader import load_model
        from common.oracle import load_hf_smollm2

        _state["ours"] = load_model("smollm2-135m", device="cpu")
        _state["hf"] = load_hf_smollm2()
    return _state["ours"], _state["hf"]


def check_logits():
    lm, hf = _models()
    ids = torch.tensor([lm.tokenizer.chat_ids(PROMPTS[0])])
    with torch.no_grad():
        diff = (lm.model(ids) - hf(ids).logits).abs().max().item()
    return passed(f"max |diff| {diff:.2e}", diff <= 1e-4)


def check_greedy():
    lm, hf = _models()
    same = 0
    for p in PROMPTS:
        ids = torch.tensor([lm.tokenizer.chat_ids(p)])
        same += ours_greedy(lm.model, ids, 64) == hf_greedy(hf, ids, 64)
    return passed(f"{same}/{len(PROMPTS)} prompts identical", same == len(PROMPTS))


def check_paris():
    from common.sampling import SamplingParams
    from phase0_tinyllama.inference_v1 import generate

    lm, _ = _models()
    ids = torch.tensor([lm.tokenizer.chat_ids(PROMPTS[0])])
    answer = lm.tokenizer.decode(generate(lm.model, ids, SamplingParams(
        max_tokens=24, temperature=0.0, stop_token_ids=lm.tokenizer.stop_token_ids()))[0])
    return passed(repr(answer[:40]), "Paris" in answer)


def check_v0_lines():
    from phase0_tinyllama import inference_v0

    n = len(Path(inference_v0.__file__).read_text().splitlines())
    return passed(f"{n} lines", n <= 100)


def check_kv_speedup_cpu():
    from phase0_tinyllama.bench_kvcache import main as bench

    row = bench(["--device", "cpu", "--tokens", "512", "--name", "kvcache_cpu_gate"])["rows"][0]
    ok = row["speedup"] >= 10
    return passed(f"{row['speedup']:.1f}x ({row['seconds_no_cache']:.0f} s vs {row['seconds_kv_cache']:.0f} s)"
                  + ("" if ok else _load_note()), ok)


def _load_note() -> str:
    """A busy machine moves this ratio (12.7x on 2 idle cores, results/kvcache_cpu.json; 7.1x measured once at a
    load average of 3-6 on the same 2 cores): say what the load was, so a failure on a shared box reads as such."""
    try:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
    except OSError:
        return ""
    busy = load > 0.75 * cores
    return f"; load average {load:.1f} on {cores} cores" + (": other work was running, re-run on an idle machine"
                                                            if busy else "")


def check_cuda_kernels_compile():
    from phase0_tinyllama.cuda_kernels import SOURCES, build, nvcc_path

    if nvcc_path() is None:
        return passed("nvcc missing", False, "install the CUDA toolkit")
    on_disk = sorted(p.name for p in (Path(__file__).parent / "cuda").glob("*.cu"))
    for src in SOURCES.values():
        build(src)  # raises on an nvcc error: the gate reports it as a failure
    return passed(f"{len(SOURCES)} .cu files built (sm_90)", len(SOURCES) == len(on_disk) == 3,
                  "" if len(on_disk) == 3 else f"expected the chapter's 3 kernels, found {on_disk}")


# --- GPU criteria: live on a GPU, quoting results/ otherwise ------------------------------------------------------
def _rec(name: str, fmt, meets=None):
    return recorded_result(PHASE, name, fmt, meets)


def check_tiled_vs_naive():
    from phase0_tinyllama.bench_kernels import main as bench

    r = bench()
    return passed(f"{r['tiled_over_naive']:.2f}x ({r['matmul_4096_fp32']['matmul_tiled']['tflops']:.1f} TFLOP/s)",
                  r["tiled_over_naive"] >= 5)


def check_kv_speedup_gpu():
    from phase0_tinyllama.bench_kvcache import main as bench

    rows = bench(["--device", "cuda", "--model", "tinyllama-1.1b", "--random-weights", "--prompt-len", "128",
                  "--batch", "1", "64", "--name", "kvcache_gpu_gate"])["rows"]
    return passed(", ".join(f"B={r['batch']} {r['speedup']:.1f}x" for r in rows),
                  any(r["batch"] == 64 and r["speedup"] >= 10 for r in rows))


def check_decode_baseline():
    from phase0_tinyllama.bench_decode import main as bench

    rows = bench(["--batch", "1", "64"])["rows"]
    with_hf = {r["batch"] for r in rows if "hf_eager" in r}
    missing = sorted({1, 64} - with_hf)
    if missing:  # a verdict, not a KeyError: the criterion is that both batches were timed beside HF eager
        return passed(f"HF eager timed at B={sorted(with_hf)}", False,
                      f"no HF eager timing at B={missing} (is transformers installed?)")
    b1 = next(r for r in rows if r["batch"] == 1)
    return passed(f"B=1 {b1['ours']['ms_per_step']:.2f} ms/token = {b1['ours_pct_of_roofline']:.0%} of roofline; "
                  f"HF eager {b1['hf_eager']['ms_per_step']:.2f}", True)


def criteria():
    yield Criterion("SmolLM2 logits = HF transformers (fp32)", "max |diff| <= 1e-4", check_logits)
    yield Criterion("greedy token-identical to HF, 64 tokens", "3/3 chat prompts", check_greedy)
    yield Criterion("SmolLM2: capital of France", "answer contains 'Paris'", check_paris)
    yield Criterion("inference_v0.py readable engine", "<= 100 lines", check_v0_lines)
    yield Criterion("CUDA kernels compile with nvcc", "all 3", check_cuda_kernels_compile)
    yield Criterion("KV cache speed-up, 512 new tokens, CPU", ">= 10x", check_kv_speedup_cpu)
    yield Criterion("tiled vs naive matmul 4096^3 (H100)", ">= 5x", check_tiled_vs_naive, needs_cuda=True,
                    recorded=_rec("kernels_gpu", lambda r: f"{r['tiled_over_naive']:.2f}x",
                                  lambda r: r["tiled_over_naive"] >= 5))
    # B=1 is reported beside it: there the no-cache step is still launch-bound (the eager reference model's ~1,000
    # kernels a step), so the ratio measures launch overhead, not the cache (README section 3 and its review question
    # "why does the CUDA graph lift B=64 to 31x but B=1 only to 7.8x?")
    yield Criterion("KV cache speed-up, 512 new tokens, GPU, B=64", ">= 10x", check_kv_speedup_gpu,
                    needs_cuda=True, recorded=_rec("kvcache_gpu", lambda r: ", ".join(
                        f"B={x['batch']} {x['speedup']:.1f}x" for x in r["rows"]) + (
                        " (decode step in a CUDA graph)" if r.get("cuda_graph") else " (eager decode)"),
                        lambda r: any(x["batch"] == 64 and x["speedup"] >= 10 for x in r["rows"])))
    yield Criterion("GPU decode baseline beside HF eager", "B=1 and B=64 recorded", check_decode_baseline,
                    needs_cuda=True, recorded=_rec("decode_gpu", lambda r: ", ".join(
                        f"B={x['batch']} {x['ours']['ms_per_step']:.1f} ms/step (HF {x['hf_eager']['ms_per_step']:.1f})"
                        for x in r["rows"]), lambda r: {x["batch"] for x in r["rows"] if "hf_eager" in x} >= {1, 64}))
