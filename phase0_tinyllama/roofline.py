"""The roofline model: attainable FLOP/s = min(peak compute, bandwidth x arithmetic intensity).

`decode_step_cost` counts the FLOPs and the fewest bytes of one decode step of a Llama-family model, `plot_roofline`
draws the H100 and RTX 4090 rooflines (datasheet peaks, plus the H100 ceilings measured on this project's H100)
with measured points on top.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.bench import CEILINGS, Ceilings
from common.config import ModelConfig


@dataclass
class Point:
    """A measured (or analytic) kernel: FLOPs done, fewest bytes moved, and its time."""
    label: str
    flops: float
    bytes: float
    ms: float | None = None

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes

    @property
    def tflops(self) -> float | None:
        return None if self.ms is None else self.flops / (self.ms * 1e-3) / 1e12

    @property
    def tb_s(self) -> float | None:
        return None if self.ms is None else self.bytes / (self.ms * 1e-3) / 1e12


def gemm_cost(m: int, n: int, k: int, dtype_bytes: int = 2) -> tuple[float, float]:
    """FLOPs and fewest bytes of C[m,n] = A[m,k] @ B[k,n]: each input read once, the output written once."""
    return 2.0 * m * n * k, float(dtype_bytes * (m * k + k * n + m * n))


def decode_step_cost(cfg: ModelConfig, batch: int, context: int, dtype_bytes: int = 2) -> tuple[float, float]:
    """One decode step for `batch` sequences at `context` cached tokens: (FLOPs, fewest bytes).

    Weights used as matmuls are read once per step (shared by the batch): everything but an untied embedding table,
    of which a step only gathers `batch` rows. Each sequence reads its own KV cache.
    Matmul FLOPs: 2 per weight per token. Attention FLOPs: 2 * 2 * context * head_dim per query head per layer.
    """
    matmul_params = cfg.num_params() - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)
    attn_flops = 4.0 * batch * cfg.num_hidden_layers * cfg.num_attention_heads * context * cfg.head_dim
    kv_bytes = batch * context * cfg.kv_bytes_per_token(dtype_bytes)
    return 2.0 * batch * matmul_params + attn_flops, float(dtype_bytes * matmul_params + kv_bytes)


def attainable_tflops(c: Ceilings, intensity: np.ndarray, measured: bool = False) -> np.ndarray:
    bw = c.measured_copy_tb_s if measured else c.hbm_tb_s
    peak = c.measured_bf16_tflops if measured else c.bf16_tflops
    return np.minimum(peak, bw * intensity)


def plot_roofline(points: list[Point] = (), devices=("H100", "RTX 4090"), ax=None, title: str | None = None):
    """Draw rooflines (log-log TFLOP/s vs FLOP/byte) and points; returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(12, 5.5), layout="constrained")
    x = np.logspace(-1, 4, 400)
    colors = {"H100": "tab:green", "RTX 4090": "tab:purple", "H200": "tab:blue", "A100": "tab:orange"}
    for name in devices:
        c = CEILINGS[name]
        ax.plot(x, attainable_tflops(c, x), color=colors.get(name), lw=2,
                label=f"{name} datasheet ({c.hbm_tb_s} TB/s, {c.bf16_tflops:.0f} TFLOP/s bf16)")
        if c.measured_copy_tb_s and c.measured_bf16_tflops:
            ax.plot(x, attainable_tflops(c, x, measured=True), color=colors.get(name), lw=1.5, ls="--",
                    label=f"{name} measured here ({c.measured_copy_tb_s} TB/s copy, "
                          f"{c.measured_bf16_tflops:.0f} TFLOP/s cuBLAS)")
    markers = iter("os^Dv<>phX*")
    for p in points:
        if p.ms is None:
            ax.axvline(p.intensity, color="gray", lw=0.8, ls=":")
            ax.text(p.intensity, 0.015, p.label, rotation=90, fontsize=7, va="bottom", ha="right")
        else:
            ax.scatter([p.intensity], [p.tflops], marker=next(markers, "o"), s=50, zorder=5,
                       label=f"{p.label}: {p.tflops:.1f} TFLOP/s, {p.tb_s:.2f} TB/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(0.01, 3000)
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("TFLOP/s")
    ax.set_title(title or "Roofline")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return ax


def points_from_results(results_dir) -> list[Point]:
    """Measured points from results/kernels_gpu.json and results/decode_gpu.json (whatever is there)."""
    import json
    from pathlib import Path

    def load(name):
        p = Path(results_dir) / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None

    pts = []
    k = load("kernels_gpu")
    if k:
        pts += [Point(name, r["flops"], r["bytes"], r["median_ms"]) for name, r in k["roofline_points"].items()]
        for name in ("matmul_naive", "matmul_tiled"):
            r = k["matmul_4096_fp32"][name]
            pts.append(Point(f"{name} fp32 4096 (fp32 roof is ~67 TFLOP/s)", r["flops"], r["bytes"], r["median_ms"]))
    d = load("decode_gpu")
    if d:
        pts += [Point(f"phase-0 decode step B={r['batch']}", r["step_flops"], r["step_min_bytes"],
                      r["ours"]["ms_per_step"]) for r in d["rows"]]
    return pts


if __name__ == "__main__":
    import argparse
    from pathlib import Path

    import matplotlib

    argparse.ArgumentParser(description=__doc__ + "\n    python -m phase0_tinyllama.roofline      # redraws "
                            "results/roofline.png from results/*.json (no GPU needed)",
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()

    matplotlib.use("Agg")
    out = Path(__file__).parent / "results"
    ax = plot_roofline(points_from_results(out), title="H100 and RTX 4090 rooflines, points measured on the H100")
    ax.figure.savefig(out / "roofline.png", dpi=110)
    print(f"wrote {out / 'roofline.png'}")
