"""Figures for the chapter, drawn from results/*.json (never from typed-in numbers), no GPU needed.

    python -m phase2_mla.plots          # writes results/mla_power_cap.png, mla_schedules.png, mla_peer.png

- mla_power_cap: the seesaw's time a tile and the SM clock at 32-128 programs doing the same work each
  (`contention_mla`): the clock falls where the board reaches its power limit, the SM clocks a tile hardly move.
- mla_schedules: every MLA decode configuration of the record (`bench_mla.json`) at DeepSeek-V3's 128 heads, B=64,
  ctx 4K, in TB/s against the 2.4 goal and the copy ceiling of the same run.
- mla_peer: ours and FlashMLA on the same board, same inputs, same call (`peer_flashmla`), per case, with the SM
  clock each ran at.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.bench import load_result  # noqa: E402

PHASE = "phase2_mla"
OUT = Path(__file__).resolve().parent / "results"
CONTENTION = "contention_mla_s1210f_h100"  # the run with clocks sampled under sustained load
PEER = "peer_flashmla_s1210p_h100"  # FlashMLA beside the seesaw on the H100 (sustained load a replayed graph)
GOAL_TB_S = 2.4


def power_cap(r: dict, axes=None) -> dict:
    """Left: µs a tile against programs, 128 heads (two programs a latent) and 64 (one); right: the median SM clock
    under load and the SM clocks a tile (µs x MHz) of the 128-head cases, cases held by the power cap marked.
    Returns {label: (programs, values)} as drawn."""
    axes = axes if axes is not None else plt.subplots(1, 2, figsize=(10, 3.8))[1]
    drawn = {}
    for heads, style in ((128, "o-"), (64, "s--")):
        cs = sorted((c for c in r["cases"] if c["heads"] == heads and c["schedule"] == "seesaw"),
                    key=lambda c: c["programs"])
        xs, ys = [c["programs"] for c in cs], [c["us_per_tile"] for c in cs]
        axes[0].plot(xs, ys, style, label=f"{heads} heads ({'two programs' if heads == 128 else 'one program'} "
                                          "a latent)")
        drawn[f"us_per_tile_{heads}"] = (xs, ys)
    ref = max((c for c in r["cases"] if c["heads"] == 128), key=lambda c: c["programs"])  # the benchmark's shape
    goal = ref["us_per_tile"] * ref["dram_tb_s"] / GOAL_TB_S  # its tile time at the goal's bandwidth
    axes[0].axhline(goal, color="tab:red", ls=":", lw=1, label=f"{GOAL_TB_S} TB/s at 128 heads, B={ref['batch']}")
    axes[0].set_xlabel("programs (one per SM, 64 tiles each)")
    axes[0].set_ylabel("µs a tile")
    axes[0].set_title("Same work per program, more programs", fontsize=9)
    axes[0].legend(fontsize=7)
    cs = sorted((c for c in r["cases"] if c["heads"] == 128 and c["schedule"] == "seesaw" and "sm_clock_mhz" in c),
                key=lambda c: c["programs"])
    xs = [c["programs"] for c in cs]
    mhz = [c["sm_clock_mhz"] for c in cs]
    clocks = [c["us_per_tile"] * c["sm_clock_mhz"] for c in cs]
    axes[1].plot(xs, mhz, "o-", color="tab:orange", label="SM clock under load (MHz)")
    for x, y, c in zip(xs, mhz, cs):
        if "sw_power_cap" in c.get("clock_limited_by", []):
            axes[1].annotate(f"power cap\n{c['power_w']:.0f} W", (x, y), fontsize=7, ha="center", va="top",
                             xytext=(0, -6), textcoords="offset points")
    axes[1].set_ylabel("MHz")
    axes[1].set_ylim(0, max(mhz) * 1.15)
    twin = axes[1].twinx()
    twin.plot(xs, clocks, "s--", color="tab:green", label="SM clocks a tile")
    twin.set_ylim(0, max(clocks) * 1.15)
    twin.set_ylabel("SM clocks a tile")
    axes[1].set_xlabel("programs (128 heads)")
    axes[1].set_title(f"The clock falls, the work per tile does not ({r['provenance']['device']})", fontsize=9)
    lines = axes[1].get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    axes[1].legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower left")
    drawn["sm_clock_mhz_128"] = (xs, mhz)
    drawn["sm_clocks_per_tile_128"] = (xs, clocks)
    return drawn


def _label(row: dict) -> str:
    if row["backend"] == "gluon":
        return f"Gluon {row.get('gluon_schedule', 'serial')}"
    return f"Triton {row['block_h']}x{row['block_n']}{' swap' if row.get('swap_ab') else ''}" \
           f"{' dv/' + str(row['dv_split']) if row.get('dv_split', 1) > 1 else ''}"


def schedules(r: dict, ax=None) -> dict:
    """Bars: TB/s of each correct configuration the record timed at 128 heads (one split), best first; the goal and
    the copy ceiling as lines. Returns {label: TB/s} as drawn."""
    ax = ax if ax is not None else plt.subplots(figsize=(8, 3.8))[1]
    rows = [x for x in r["mla_dsv3"]["rows"] if x.get("correct") and "tb_s" in x and x.get("num_splits", 1) in (1,
                                                                                                               None)]
    best: dict[str, float] = {}
    for x in rows:
        best[_label(x)] = max(best.get(_label(x), 0.0), x["tb_s"])
    drawn = dict(sorted(best.items(), key=lambda kv: -kv[1]))
    bars = ax.bar(range(len(drawn)), list(drawn.values()), color="tab:blue")
    for b, v in zip(bars, drawn.values()):
        ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(drawn)), list(drawn), rotation=20, ha="right", fontsize=8)
    ceiling = r["copy_ceiling"]["tb_s"]
    ax.axhline(ceiling, color="k", ls="--", lw=1, label=f"copy ceiling {ceiling:.2f} TB/s")
    ax.axhline(GOAL_TB_S, color="tab:red", ls=":", lw=1, label=f"goal {GOAL_TB_S} TB/s")
    ax.set_ylabel("latent bytes read / time (TB/s)")
    ax.set_title(f"MLA decode, 128 heads, B={r['mla_dsv3']['batch']}, ctx {r['mla_dsv3']['ctx'] // 1024}K, bf16 "
                 f"({r['provenance']['device']}, {r['provenance']['commit']})", fontsize=9)
    ax.legend(fontsize=7)
    return drawn


def peer(r: dict, ax=None) -> dict:
    """Grouped bars: TB/s of ours and FlashMLA per case of a peer_flashmla record, each bar labelled with the SM
    clock under that kernel; the goal as a line. Returns {case: (ours TB/s, FlashMLA TB/s)} as drawn."""
    from phase2_mla.peer_flashmla import rows_by_kernel
    ax = ax if ax is not None else plt.subplots(figsize=(8, 3.8))[1]
    drawn = {}
    w = 0.38
    for i, c in enumerate(r["cases"]):
        rows = rows_by_kernel(c)
        if not all("tb_s" in rows.get(k, {}) for k in ("ours", "flashmla")):
            continue
        label = f"{c['heads']} heads, B={c['batch']}"
        drawn[label] = (rows["ours"]["tb_s"], rows["flashmla"]["tb_s"])
        for dx, k, color in ((-w / 2, "ours", "tab:blue"), (w / 2, "flashmla", "tab:gray")):
            x = rows[k]
            b = ax.bar(len(drawn) - 1 + dx, x["tb_s"], w, color=color,
                       label=("ours (seesaw)" if k == "ours" else "FlashMLA (vLLM 0.25.0)") if len(drawn) == 1
                       else None)[0]
            mhz = f"\n{x['sm_clock_mhz']:.0f} MHz" if "sm_clock_mhz" in x else ""
            ax.annotate(f"{x['tb_s']:.2f}{mhz}", (b.get_x() + b.get_width() / 2, x["tb_s"]), ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks(range(len(drawn)), list(drawn), fontsize=8)
    ax.set_xlabel("TB/s: interleaved timing rounds (median); MHz: the SM clock while that kernel ran sustained",
                  fontsize=8)
    ax.axhline(GOAL_TB_S, color="tab:red", ls=":", lw=1, label=f"goal {GOAL_TB_S} TB/s (128 heads, B=64)")
    ax.set_ylabel("latent bytes read / time (TB/s)")
    ax.set_ylim(0, max(max(v) for v in drawn.values()) * 1.25 if drawn else 3)
    ax.set_title(f"MLA decode, ctx {r['cases'][0]['ctx'] // 1024}K, same inputs and call "
                 f"({r['provenance']['device']}, {r['provenance']['commit']})", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return drawn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT, help="directory for the PNGs (default: results/)")
    args = ap.parse_args(argv)
    figures = (("mla_power_cap", CONTENTION, power_cap), ("mla_schedules", "bench_mla", schedules),
               ("mla_peer", PEER, peer))
    wrote = 0
    for name, stem, draw in figures:
        r = load_result(PHASE, stem)
        if r is None:
            print(f"no results/{stem}.json yet: skipping {name}.png")
            continue
        draw(r)
        plt.tight_layout()
        args.out.mkdir(parents=True, exist_ok=True)
        plt.savefig(args.out / f"{name}.png", dpi=110)
        plt.close("all")
        wrote += 1
        print(f"wrote {args.out / name}.png")
    return 0 if wrote else 1


if __name__ == "__main__":
    raise SystemExit(main())
