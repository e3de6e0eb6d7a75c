"""Figures for the chapter, drawn from results/*.json (never from typed-in numbers).

    python -m phase3_paged_fp8.plots        # writes results/decode_bandwidth.png, decode_splits.png, fp8.png
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.bench import load_result  # noqa: E402

PHASE = "phase3_paged_fp8"
OUT = Path(__file__).resolve().parent / "results"


def decode_bandwidth(r: dict, ax=None):
    """Bars: Triton paged decode, contiguous SDPA and gather+SDPA per shape, in TB/s of KV read."""
    ax = ax or plt.subplots(figsize=(8, 3.8))[1]
    rows = r["decode_compare"]["rows"]
    labels = [f"B{x['b']}\n{x['ctx'] // 1024}K" for x in rows]
    series = [("paged (Triton)", [x["kv_bytes"] / x["triton_ms_best"] / 1e9 for x in rows]),  # the best split count measured
              ("contiguous SDPA", [x["contiguous_sdpa_tb_s"] for x in rows]),
              ("gather + SDPA", [x["kv_bytes"] / x["gather_sdpa_ms"] / 1e9 for x in rows])]
    w = 0.27
    for i, (name, ys) in enumerate(series):
        ax.bar([j + (i - 1) * w for j in range(len(rows))], ys, w, label=name)
    ceiling = r["copy_ceiling"]["tb_s"]
    ax.axhline(ceiling, color="k", ls="--", lw=1, label=f"copy ceiling {ceiling:.2f} TB/s")
    ax.axhline(0.85 * ceiling, color="gray", ls=":", lw=1, label="85% of it")
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylabel("KV bytes read / time (TB/s)")
    ax.set_title(f"Decode attention, 32q/4kv d64 bf16, block 16 ({r['provenance']['device']})", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    return ax


def decode_splits(r: dict, ax=None):
    """Time vs split count for every shape: why split-KV exists."""
    ax = ax or plt.subplots(figsize=(6, 3.8))[1]
    for x in r["decode_compare"]["rows"]:
        sp = sorted((int(k), v) for k, v in x["splits_ms"].items())
        ax.plot([a for a, _ in sp], [v * 1e3 for _, v in sp], marker="o", label=f"B{x['b']} {x['ctx'] // 1024}K")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("KV splits per sequence")
    ax.set_ylabel("decode step (us)")
    ax.set_title("Split-KV: more programs until ~8 per SM", fontsize=9)
    ax.legend(fontsize=7)
    return ax


def fp8(r: dict, acc: dict | None, axes=None):
    """FP8 vs bf16: bytes, time, and (from the CPU run) perplexity."""
    axes = axes if axes is not None else plt.subplots(1, 3, figsize=(9, 3))[1]
    f = r["fp8_vs_bf16"]
    axes[0].bar(["bf16", "fp8"], [f["bf16"]["allocated_bytes"] / 2**20, f["fp8"]["allocated_bytes"] / 2**20])
    axes[0].set_title("cache bytes (MiB)", fontsize=9)
    axes[1].bar(["bf16", "fp8"], [f["bf16"]["ms"] * 1e3, f["fp8"]["ms"] * 1e3])
    axes[1].set_title("decode B32 8K (us)", fontsize=9)
    if acc:
        axes[2].bar(list(acc["ppl"]), list(acc["ppl"].values()))
        axes[2].set_ylim(min(acc["ppl"].values()) * 0.98, max(acc["ppl"].values()) * 1.01)
        axes[2].set_title(f"SmolLM2 ppl, {acc['num_tokens']} tok", fontsize=9)
    return axes


def main() -> int:
    r = load_result(PHASE, "attention_h100")
    if r is None:
        raise SystemExit("no results/attention_h100.json yet: run bench_attention on a GPU first")
    acc = load_result(PHASE, "fp8_accuracy_cpu")
    for name, draw in (("decode_bandwidth", lambda: decode_bandwidth(r)), ("decode_splits", lambda: decode_splits(r)),
                       ("fp8", lambda: fp8(r, acc))):
        draw()
        plt.tight_layout()
        plt.savefig(OUT / f"{name}.png", dpi=110)
        plt.close("all")
        print(f"wrote {OUT / name}.png")
    return 0


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    raise SystemExit(main())
