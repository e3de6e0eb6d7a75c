"""Plots of phase 4's recorded GPU results (results/*.json -> results/*.png), no GPU needed.

    PYTHONPATH=. python -m phase4_scheduler.plots            # every plot whose JSON exists
    PYTHONPATH=. python -m phase4_scheduler.plots --out /tmp # elsewhere

Each `plot_*` takes the dict of loaded results (file stem -> JSON, as common.report loads them), draws one PNG and
returns the values it drew ({label: value}), so the tests can check the bars against the JSON they came from.

NOTE (what is comparable): bars in one figure come from H100 runs of one session (ours and vLLM in consecutive device
calls; the overlapped-decode runs later, each JSON's provenance names its date and commit), same workload per figure;
the decode profile's stacked bars are GPU time, its markers profiled wall time (an upper bound); the serving
percentiles come from the vLLM peer's client against `titan serve` only — vLLM's serving figures are in
../shared/ANCHORS.md from a different run and are not drawn here.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.report import load_results  # noqa: E402

PHASE_DIR = Path(__file__).resolve().parent


def _need(results: dict, *names: str) -> None:
    missing = [n for n in names if n not in results]
    if missing:
        raise KeyError(f"results/{', '.join(missing)}.json missing: run the GPU benchmark that writes it first")


def _bars(ax, values: dict, fmt: str) -> None:
    bars = ax.bar(range(len(values)), list(values.values()), color="tab:blue")
    ax.set_xticks(range(len(values)), list(values), rotation=20, ha="right", fontsize=8)
    for b, v in zip(bars, values.values()):
        ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_b1(results: dict, out: Path) -> dict:
    """B=1 decode ms/token (TinyLlama-1.1B shapes, 128 in / 256 out), log scale, roofline and target lines; the
    overlapped-decode run (latency_overlap_gpu, with its overlap-off row) where it was recorded."""
    _need(results, "latency_gpu", "offline_gpu_1024", "vllm_tinyllama_gpu")
    lat, off, vl = results["latency_gpu"], results["offline_gpu_1024"], results["vllm_tinyllama_gpu"]
    values = {f"ours {v['variant']} (bench_latency)": v["engine_ms_per_token"] for v in lat["variants"]}
    values["ours graph+fused (LLMEngine)"] = off["latency"]["ms_per_token"]
    for v in results.get("latency_overlap_gpu", {}).get("variants", []):
        values[f"ours {v['variant']}, overlap {'on' if v['overlap'] else 'off'}"] = v["engine_ms_per_token"]
    values[f"vLLM {vl['vllm']}"] = vl["b1_ms_per_token"]
    values["HF eager"] = off["summary"]["hf_b1_ms_per_step"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    _bars(ax, values, "{:.2f}")
    roof = lat["variants"][0]["roofline_ms"]
    ax.axhline(roof, color="k", ls="--", lw=1, label=f"roofline {roof:.2f} ms (weights at copy bandwidth)")
    ax.axhline(0.92, color="tab:red", ls=":", lw=1, label="target 0.92 ms")
    ax.set_yscale("log")
    ax.set_ylabel("ms per output token (log)")
    ax.set_title(f"B=1 decode, {lat['model']} shapes, {lat['provenance']['device']}", fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, out / "b1_latency_gpu.png")
    return values


B1_HISTORY = (  # the H100's B=1 record after each change that moved it (file stem, what changed); the default engine
    ("latency_s1206_h100", "14th: PDL, fused attention,\nper-sequence splits"),
    ("latency_s1208e_h100", "18th: SiLU epilogue,\nwhole-row GEMV tiles"),
    ("latency_s1208l_h100", "18th: argmax kernel,\nfp32 logits from lm_head"),
    ("latency_graphio_s1210h_h100", "20th: direct graph I/O"),
)


def plot_b1_history(results: dict, out: Path) -> dict:
    """B=1 on the H100 across sessions (B1_HISTORY, each run's first variant: the default engine): the engine's
    ms/token beside the graph replay's own time, against the 0.92 ms target and each run's weight roofline."""
    _need(results, *(stem for stem, _ in B1_HISTORY))
    rows = [(label, results[stem]["variants"][0]) for stem, label in B1_HISTORY]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    values = {}
    xs = range(len(rows))
    for name, key, style, dy in (("engine (what a user waits for)", "engine_ms_per_token", "o-", 6),
                                 ("graph replay alone", "forward_ms_median", "s--", -12)):
        ys = [v[key] for _, v in rows]
        ax.plot(xs, ys, style, label=name)  # markers, not bars: the axis does not start at 0
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.3f}", (x, y), ha="center", fontsize=7, xytext=(0, dy), textcoords="offset points")
        values.update({f"{label} {name.split(' (')[0]}": v[key] for label, v in rows})
    roof = rows[-1][1]["roofline_ms"]
    ax.axhline(0.92, color="tab:red", ls=":", lw=1, label="target 0.92 ms")
    ax.axhline(roof, color="k", ls="--", lw=1, label=f"weight roofline {roof:.3f} ms (last run)")
    ax.set_xticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
    ax.set_ylim(0.7, 1.0)
    ax.set_ylabel("ms per output token")
    ax.set_title(f"B=1 decode, TinyLlama-1.1B shapes, {results[B1_HISTORY[-1][0]]['provenance']['device']}: the "
                 "record after each change", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    _save(fig, out / "b1_history_h100.png")
    return values


OFFLINE_RUNS = (  # later offline runs of the same workload (file stem, bar label), drawn where recorded
    ("offline_gpu_1024_fused", "ours, before overlap"),
    ("offline_gpu_1024_overlap", "ours, overlapped decode"),
    ("offline_gpu_1024_overlap_b32k", "ours, overlap + 32k budget"),
)


def plot_offline(results: dict, out: Path) -> dict:
    """Offline output tokens/s: ours continuous and static, the later overlapped-decode runs, vLLM, HF eager;
    target line."""
    _need(results, "offline_gpu_1024", "vllm_tinyllama_gpu")
    off, vl = results["offline_gpu_1024"], results["vllm_tinyllama_gpu"]
    w = off["workload"]
    values = {f"ours {r['label']}": r["output_tokens_per_s"] for r in off["rows"]}
    values.update({label: results[stem]["rows"][0]["output_tokens_per_s"]
                   for stem, label in OFFLINE_RUNS if stem in results})
    values[f"vLLM {vl['vllm']} 1024 reqs"] = vl["offline_1024x128x128"]["out_tok_per_s"]
    values[f"vLLM {vl['vllm']} 256 reqs"] = vl["offline_256x128x128"]["out_tok_per_s"]
    values["HF eager B=64"] = off["summary"]["hf_b64_output_tok_s"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    _bars(ax, {k: v / 1e3 for k, v in values.items()}, "{:.1f}k")
    ax.axhline(100, color="tab:red", ls=":", lw=1, label="target 100k tok/s")
    ax.set_ylabel("output tokens/s (thousands)")
    ax.set_title(f"offline {w['num_prompts']} x ({w['input_len']} in, {w['output_len']} out), "
                 f"{off['provenance']['device']}", fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, out / "offline_throughput_gpu.png")
    return values


def plot_sharegpt(results: dict, out: Path) -> dict:
    """ShareGPT continuous vs static, before and after admission batching."""
    _need(results, "sharegpt_static_vs_continuous_gpu_eager_admission", "sharegpt_static_vs_continuous_gpu")
    runs = {"before (admit every step)": results["sharegpt_static_vs_continuous_gpu_eager_admission"],
            "after (admission batching)": results["sharegpt_static_vs_continuous_gpu"]}
    values = {f"{run}: {r['label']}": r["output_tokens_per_s"] for run, res in runs.items() for r in res["rows"]}
    fig, ax = plt.subplots(figsize=(7, 4))
    _bars(ax, {k: v / 1e3 for k, v in values.items()}, "{:.1f}k")
    ax.set_ylabel("output tokens/s (thousands)")
    w = results["sharegpt_static_vs_continuous_gpu"]["workload"]
    ax.set_title(f"ShareGPT {w['num_prompts']} requests, max_num_seqs {w['max_num_seqs']} (static baseline unpadded)",
                 fontsize=9)
    _save(fig, out / "sharegpt_admission_gpu.png")
    return values


PROFILE_RUNS = (("before overlap", "profile_decode_overlap_off_gpu"), ("overlapped", "profile_decode_overlap_on_gpu"))
CLASSES = ("gemm", "attention", "norm", "rope", "activation", "copy", "sampling", "other")


def _profile_bars(results: dict) -> list:
    """[(batch, run label, row)] for every batch size profiled, runs side by side within a batch."""
    runs = [(label, results[stem]) for label, stem in PROFILE_RUNS if stem in results]
    batches = sorted({r["batch"] for _, res in runs for r in res["rows"]})
    return [(b, label, r) for b in batches for label, res in runs for r in res["rows"] if r["batch"] == b]


def plot_profile(results: dict, out: Path) -> dict:
    """Decode step GPU time per kernel class (stacked, ms/step) per batch size, before vs after overlapped decode,
    with the profiled wall time per step as a marker (the gap above a bar: the GPU waiting for the host)."""
    _need(results, *(stem for _, stem in PROFILE_RUNS))
    bars, values = _profile_bars(results), {}
    fig, ax = plt.subplots(figsize=(8, 4.2))
    xs, x = [], -1.0
    for i, (b, _, _) in enumerate(bars):  # bars of one batch size adjacent, a gap between batch sizes
        x += 1.0 + (0.6 if i and b != bars[i - 1][0] else 0.0)
        xs.append(x)
    bottom = [0.0] * len(bars)
    for c, color in zip(CLASSES, plt.cm.tab10.colors):
        us = [r["classes"].get(c, {}).get("us_per_step", 0.0) for _, _, r in bars]
        ax.bar(xs, [u / 1e3 for u in us], bottom=bottom, color=color, label=c, width=0.9)
        bottom = [b + u / 1e3 for b, u in zip(bottom, us)]
        values.update({f"{label} B={b} {c} us": u for (b, label, _), u in zip(bars, us)})
    walls = [r["wall_ms_per_step"] for _, _, r in bars]
    ax.scatter(xs, walls, marker="_", s=400, color="k", zorder=3, label="wall ms/step (profiled)")
    values.update({f"{label} B={b} wall ms": r["wall_ms_per_step"] for b, label, r in bars})
    ax.set_xticks(xs, [f"B={b}\n{label}" for b, label, _ in bars], fontsize=7)
    ax.set_ylabel("ms per decode step")
    dev = results[PROFILE_RUNS[-1][1]]["provenance"]["device"]
    ax.set_title(f"decode step: GPU time per kernel class vs wall time, fused + CUDA graphs, {dev}", fontsize=9)
    ax.set_ylim(0, 1.3 * max(walls + bottom))
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    _save(fig, out / "decode_profile_gpu.png")
    return values


SERVE_RUN = "_b8192"  # titan_serve_rate<R>_b8192.json: `titan serve --max-num-batched-tokens 8192`


def plot_serve(results: dict, out: Path) -> dict:
    """`titan serve` TTFT and TPOT percentiles per request rate (the client records percentiles, not requests)."""
    # the current server configuration's runs (token budget 8192); the earlier budget-2048 runs stay in results/
    names = sorted((n for n in results if n.startswith("titan_serve_rate") and n.endswith(SERVE_RUN)),
                   key=lambda n: results[n]["rate"])
    if not names:
        raise KeyError("results/titan_serve_rate*.json missing: run the vLLM peer's serve_bench.py against titan serve")
    values = {}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, ("ttft_ms", "tpot_ms")):
        for n in names:
            r = results[n]
            ps = [k for k in ("p50", "p90", "p99") if k in r[metric]]
            ys = [r[metric][k] for k in ps]
            ax.plot(ps, ys, marker="o", label=f"{r['rate']:g} req/s ({r['req_per_s']:.1f} served)")
            values.update({f"{metric} {k} @ {r['rate']:g}": y for k, y in zip(ps, ys)})
        ax.set_yscale("log")
        ax.set_title(metric.split("_")[0].upper() + " (ms, log)", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle("titan serve, ShareGPT 1000 requests, Poisson arrivals (vLLM peer's client)", fontsize=9)
    _save(fig, out / "serve_percentiles_gpu.png")
    return values


PLOTS = (plot_b1, plot_b1_history, plot_offline, plot_profile, plot_sharegpt, plot_serve)


def main(argv: list[str] | None = None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--out", type=Path, default=PHASE_DIR / "results")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = load_results(PHASE_DIR)
    drawn = {}
    for fn in PLOTS:
        try:
            drawn[fn.__name__] = fn(results, args.out)
            print(f"{fn.__name__}: {len(drawn[fn.__name__])} values -> {args.out}")
        except KeyError as e:
            print(f"{fn.__name__}: skipped ({e})")
    return drawn


if __name__ == "__main__":
    main()
