"""GPU: the attention of a MIXED serving step -- many decodes (one new token over a cached history) packed beside
new prompts -- through phase 3's paged prefill kernel (what the engine runs between the mixed-step graphs), against
the split a step could make instead (the decodes through the paged decode kernel, the prompts through the prefill
kernel), as the engine makes it (TITAN_MIXED_ATTENTION=split) and at its floor. TinyLlama shapes (32 q / 4 KV heads
x 64, bf16, 16-token blocks).

    PYTHONPATH=$PWD TITAN_RESULTS_DIR=$OUT python3 -m phase4_scheduler.bench_mixed_attention [--cases 448x260+2x109]

A case DxC+PxL: D decodes with C cached tokens each (the new one included), P prompts of L new tokens. Each timing
is one CUDA graph over `--layers` layers, each with its own cache (the history comes from HBM, not L2); per layer.
`kv_TBps`: the bytes of K/V a layer must read (every sequence's history once, per KV head) over the time. The two
paths are checked against each other on the same inputs. Run it on two commits in one device call to compare
kernel versions (the GQA-packed prefill kernel of phase 3 against the one before it). The engine runs either path:
TITAN_MIXED_ATTENTION=packed (default) or split (model_runner.BatchAttention). Writes
results/mixed_attention_gpu.json (name with --name).
"""
from __future__ import annotations

import argparse
import inspect
import re

import torch
from common import artifacts
from phase4_scheduler.bench_decode_attention import BS, D, HKV, HQ, random_caches, sweep_cases
from phase4_scheduler.bench_fused import graph_ms


def parse_case(text: str) -> tuple[int, int, int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)\+(\d+)x(\d+)", text)
    if not m:
        raise ValueError(f"a case is DECODESxCONTEXT+PROMPTSxLENGTH (e.g. 448x260+2x109), got {text!r}")
    d, c, p, n = map(int, m.groups())
    if d < 1 or c < 1 or (p and n < 2):
        raise ValueError(f"{text!r}: at least one decode, a context >= 1, prompts of >= 2 tokens (one is a decode)")
    return d, c, p, n


def build(decodes: int, ctx: int, prompts: int, plen: int, layers: int, seed: int = 0, dev: str = "cuda",
          fp8: bool = False) -> dict:
    """The step's tensors: decodes first (rows 0..D-1), then the prompts; per layer its own cache."""
    g = torch.Generator(device=dev).manual_seed(seed)
    q_lens = [1] * decodes + [plen] * prompts
    seq_lens = [ctx] * decodes + [plen] * prompts
    width = -(-max(seq_lens) // BS)
    nblk = sum(-(-n // BS) for n in seq_lens) + 1
    perm = torch.randperm(nblk - 1, device=dev, generator=g).to(torch.int32)
    bt = torch.zeros(len(q_lens), width, dtype=torch.int32, device=dev)
    off = 0
    for b, n in enumerate(seq_lens):  # each sequence's pages, scattered over the pool
        k = -(-n // BS)
        bt[b, :k] = perm[off:off + k]
        off += k
    ql = torch.tensor(q_lens, dtype=torch.int32, device=dev)
    sl = torch.tensor(seq_lens, dtype=torch.int32, device=dev)
    cu = torch.zeros(len(q_lens) + 1, dtype=torch.int32, device=dev)
    cu[1:] = torch.cumsum(ql, 0)
    t = int(cu[-1])
    seq = torch.repeat_interleave(torch.arange(len(q_lens), device=dev), ql.long())  # [T] each row's sequence
    pos = (sl - ql).long()[seq] + torch.arange(t, device=dev) - cu[:-1].long()[seq]  # [T] absolute positions
    slots = bt[seq, pos // BS].long() * BS + pos % BS
    caches = random_caches(nblk, layers, g, fp8, dev)  # per layer (k, v, k_scale, v_scale)
    mk = lambda h: torch.randn(t, h, D, device=dev, generator=g, dtype=torch.bfloat16)  # noqa: E731
    return {"q": mk(HQ), "k": mk(HKV), "v": mk(HKV), "cu": cu, "sl": sl, "bt": bt, "slots": slots, "caches": caches,
            "decodes": decodes, "max_q_len": max(q_lens),
            "kv_bytes": 2 * sum(seq_lens) * HKV * (D + 2 if fp8 else D * 2),
            "single_rows": torch.arange(decodes, device=dev)}


def packed(s: dict, layer: int) -> torch.Tensor:
    """What the engine runs: every row through the prefill kernel (it writes the new K/V first)."""
    kc, vc, ks, vs = s["caches"][layer]
    return artifacts.get("attention.paged_prefill")(s["q"], s["k"], s["v"], s["cu"], s["sl"], s["bt"], kc, vc,
                                                    s["slots"], ks, vs, max_q_len=s["max_q_len"])


def split(s: dict, layer: int) -> torch.Tensor:
    """What the engine runs with TITAN_MIXED_ATTENTION=split (model_runner.BatchAttention): one prefill launch over
    every sequence that writes all K/V and skips the one-token ones, then those through the decode kernel
    (gathered q rows, scattered outputs)."""
    kc, vc, ks, vs = s["caches"][layer]
    d = s["decodes"]
    rows = s["single_rows"]
    out = artifacts.get("attention.paged_prefill")(s["q"], s["k"], s["v"], s["cu"], s["sl"], s["bt"], kc, vc,
                                                   s["slots"], ks, vs, max_q_len=s["max_q_len"], skip_single=True)
    dec = artifacts.get("attention.paged_decode")(s["q"].index_select(0, rows), kc, vc, s["bt"][:d], s["sl"][:d],
                                                  ks, vs)
    return out.index_copy_(0, rows, dec)


def split_ideal(s: dict, layer: int) -> torch.Tensor:
    """The floor of splitting: the decodes (rows 0..D-1, contiguous here) through the decode kernel, the prompts
    alone through the prefill kernel (no skipped programs, no gather or scatter)."""
    kc, vc, ks, vs = s["caches"][layer]
    d = s["decodes"]
    artifacts.get("kv_cache.write")(s["k"][:d], s["v"][:d], s["slots"][:d], kc, vc, ks, vs)
    out_d = artifacts.get("attention.paged_decode")(s["q"][:d], kc, vc, s["bt"][:d], s["sl"][:d], ks, vs)
    if s["q"].shape[0] == d:
        return out_d
    cu = s["cu"][d:] - d
    out_p = artifacts.get("attention.paged_prefill")(s["q"][d:], s["k"][d:], s["v"][d:], cu, s["sl"][d:],
                                                     s["bt"][d:], kc, vc, s["slots"][d:], ks, vs,
                                                     max_q_len=s["max_q_len"])
    return torch.cat((out_d, out_p))


def run_case(text: str, layers: int, fp8: bool = False) -> dict:
    d, c, p, n = parse_case(text)
    s = build(d, c, p, n, layers, fp8=fp8)
    paths = {"packed": packed, "split": split, "split_ideal": split_ideal}
    if "skip_single" not in inspect.signature(artifacts.get("attention.paged_prefill")).parameters:
        del paths["split"]  # a commit before the engine's split path (the A/B against the older kernel)
    a = packed(s, 0)
    err = max((a.float() - fn(s, 0).float()).abs().max().item() for fn in paths.values())  # same cache and inputs
    if not err < 5e-2:
        raise AssertionError(f"{text}: packed and split attention differ by {err}")
    us = {name: graph_ms([lambda i=i, fn=fn: fn(s, i) for i in range(layers)], reps=20) * 1e3
          for name, fn in paths.items()}
    return {"case": text, "kv_cache_dtype": "fp8" if fp8 else "bf16", "decodes": d, "ctx": c, "prompts": p,
            "prompt_len": n, "tokens": d + p * n,
            "max_abs_diff": err, **{f"{k}_us": v for k, v in us.items()}, "kv_bytes": s["kv_bytes"],
            **{f"{k}_kv_TBps": s["kv_bytes"] / v / 1e6 for k, v in us.items()}}


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--cases", nargs="+", help="DECODESxCONTEXT+PROMPTSxLENGTH",
                    default=["448x260+2x109", "448x260+0x0", "256x512+1x109", "64x1024+1x512",
                             "448x260+1x1024"])  # the last: one long chunk beside many decodes (phase 3's flat grid)
    ap.add_argument("--layers", type=int, default=22, help="layers per graph (each its own cache); TinyLlama: 22")
    ap.add_argument("--kv-cache-dtype", choices=["bf16", "fp8", "both"], default="bf16",
                    help="the cache's format (fp8: phase 3's e4m3 + fp16 scales); both: each case over each, same run")
    ap.add_argument("--name", default="mixed_attention_gpu")
    args = ap.parse_args(argv)
    try:
        for c in args.cases:
            parse_case(c)
    except ValueError as e:
        ap.error(str(e))
    dts = ["bf16", "fp8"] if args.kv_cache_dtype == "both" else [args.kv_cache_dtype]
    return sweep_cases("bench_mixed_attention", [f"{c}:{dt}" for c in args.cases for dt in dts],
                       lambda c: run_case(c.split(":")[0], args.layers, fp8=c.endswith(":fp8")), args.layers,
                       args.name)


if __name__ == "__main__":
    main()
