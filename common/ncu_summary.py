"""Digest of an Nsight Compute profile: the few counters that say what bounds a kernel, and where its warps wait.

    python -m common.ncu_summary RAW.csv.gz [--sass SASS.csv.gz] [--json OUT.json]

Inputs are what tools/device_session.sh writes on the GPU machine (`ncu --import R --page raw --csv` and
`--page source --print-source sass --csv`, gzipped or not). Prints a markdown table per profiled kernel: duration,
compute / memory throughput, issue activity, tensor-pipe activity, achieved occupancy and registers, the warp stall
reasons (cycles per issued instruction, largest first) and, from the SASS page, the instructions where the sampled
warps waited most. Metric names differ between ncu versions and GPUs: every lookup is by name pattern, and a metric
the profile lacks is left out rather than guessed.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import re
from pathlib import Path

# (label, regex on the metric name): the first metric matching each pattern is reported
HEADLINE = [
    ("duration", r"^gpu__time_duration\.sum$"),
    ("SM throughput % of peak", r"^sm__throughput\.avg\.pct_of_peak_sustained_elapsed$"),
    ("memory throughput % of peak", r"^gpu__compute_memory_throughput\.avg\.pct_of_peak_sustained_elapsed$"),
    ("DRAM throughput % of peak", r"^dram__throughput\.avg\.pct_of_peak_sustained_elapsed$"),
    ("DRAM bytes read", r"^dram__bytes_read\.sum$"),
    ("issue slots busy %", r"^sm__instruction_throughput\.avg\.pct_of_peak_sustained_active$"),
    ("issue active % (per scheduler)", r"^smsp__issue_active\.avg\.pct_of_peak_sustained_active$"),
    ("tensor pipe (wgmma) active %", r"^sm__pipe_tensor_op_gmma_cycles_active\.avg\.pct_of_peak_sustained_active$"),
    ("tensor pipe (mma) active %", r"^sm__pipe_tensor_op_hmma_cycles_active\.avg\.pct_of_peak_sustained_active$"),
    ("achieved occupancy %", r"^sm__warps_active\.avg\.pct_of_peak_sustained_active$"),
    ("registers / thread", r"^launch__registers_per_thread$"),
    ("shared memory / block", r"^launch__shared_mem_per_block(_dynamic)?$"),
    ("grid size", r"^launch__grid_size$"),
    ("block size", r"^launch__block_size$"),
    ("warps per scheduler", r"^smsp__warps_active\.avg\.per_cycle_active$"),
    ("eligible warps per scheduler", r"^smsp__warps_eligible\.avg\.per_cycle_active$"),
]
STALL = re.compile(r"^smsp__average_warps?_(?:latency_)?issue_stalled_(\w+?)_per_issue_active\.ratio$")


def _open(path: Path):
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return io.StringIO(data.decode("utf-8", "replace"))


def _csv_rows(path: Path) -> list[list[str]]:
    """The CSV rows after any lines ncu printed before the table (==PROF== notes)."""
    lines = _open(path).read().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"')), None)
    if start is None:
        raise ValueError(f"{path}: no CSV table in it (was the profile empty? first lines: {lines[:3]})")
    return list(csv.reader(lines[start:]))


def _number(text: str):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def read_raw(path: Path) -> list[dict]:
    """`--page raw --csv`: a header row of metric names, a row of units, one row per profiled kernel.
    -> [{"name": kernel, "metrics": {metric: (value, unit)}}]."""
    rows = _csv_rows(path)
    if len(rows) < 3:
        raise ValueError(f"{path}: want a header, a units row and at least one kernel row, got {len(rows)} rows")
    head, units = rows[0], rows[1]
    out = []
    for row in rows[2:]:
        if len(row) != len(head):
            continue
        m = {h: (v if (x := _number(v)) is None else x, u) for h, u, v in zip(head, units, row)}
        name = next((row[i] for i, h in enumerate(head) if h in ("Kernel Name", "Function Name")), "?")
        out.append({"name": name, "metrics": m})
    if not out:
        raise ValueError(f"{path}: no kernel rows")
    return out


def headline(metrics: dict) -> list[tuple[str, object, str]]:
    out = []
    for label, pattern in HEADLINE:
        rx = re.compile(pattern)
        hit = next((k for k in metrics if rx.match(k)), None)
        if hit is not None:
            value, unit = metrics[hit]
            out.append((label, value, unit))
    return out


def stalls(metrics: dict) -> list[tuple[str, float]]:
    """Warp stall reasons as cycles per issued instruction, largest first (0s left out)."""
    out = []
    for k, (v, _unit) in metrics.items():
        m = STALL.match(k)
        if m and isinstance(v, float) and v > 0:
            out.append((m.group(1), v))
    return sorted(out, key=lambda kv: -kv[1])


def read_sass(path: Path, top: int = 15) -> dict:
    """`--page source --print-source sass --csv`: per instruction, the sampled warps (and, in newer ncu, one column
    per stall reason). -> the sampling column's total, the stall reasons' totals over all instructions (largest first)
    and the `top` instructions by samples (address, SASS text, samples, share, their largest stall reason)."""
    rows = _csv_rows(path)
    at = next((i for i, r in enumerate(rows) if "Source" in r or "Address" in r), None)
    if at is None:
        raise ValueError(f"{path}: no Source / Warp Stall Sampling columns (got {rows[0][:12]})")
    head, body = rows[at], rows[at + 1:]
    col = {h: i for i, h in enumerate(head)}
    src = next((h for h in head if h.lower() in ("source", "sass")), None)
    addr = next((h for h in head if h.lower() == "address"), None)
    sampling = [h for h in head if "Sampling" in h and "All" in h] or [h for h in head if "Sampling" in h]
    if src is None or not sampling:
        raise ValueError(f"{path}: no Source / Warp Stall Sampling columns (got {head[:12]})")
    key = sampling[0]
    reasons = [h for h in head if h.startswith("stall_") and "Not Issued" not in h]
    totals = dict.fromkeys(reasons, 0.0)
    items = []
    for row in body:
        if len(row) != len(head):
            continue
        n = _number(row[col[key]])
        per = {r: (_number(row[col[r]]) or 0.0) for r in reasons}
        for r, v in per.items():
            totals[r] += v
        if n:
            worst = max(per, key=per.get) if per and max(per.values()) > 0 else None
            items.append((row[col[addr]] if addr else "", row[col[src]].strip(), n, worst))
    total = sum(t[2] for t in items) or 1.0
    items.sort(key=lambda t: -t[2])
    by_reason = sorted(((r[len("stall_"):], v) for r, v in totals.items() if v > 0), key=lambda kv: -kv[1])
    return {"column": key, "samples": total, "stall_samples": by_reason,
            "top": [{"address": a, "sass": s, "samples": n, "share": n / total,
                     "stall": (w[len("stall_"):] if w else None)} for a, s, n, w in items[:top]]}


def summarize(raw: Path, sass: Path | None = None) -> dict:
    kernels = []
    for k in read_raw(raw):
        kernels.append({"name": k["name"], "headline": headline(k["metrics"]), "stalls": stalls(k["metrics"])})
    out = {"raw": str(raw), "kernels": kernels}
    if sass is not None:
        out["sass"] = read_sass(sass)
    return out


def markdown(s: dict) -> str:
    lines = []
    for k in s["kernels"]:
        lines += [f"### {k['name'][:100]}", "", "| counter | value |", "|---|---|"]
        lines += [f"| {label} | {value:,.4g} {unit} |" if isinstance(value, float) else f"| {label} | {value} {unit} |"
                  for label, value, unit in k["headline"]]
        if k["stalls"]:
            total = sum(v for _, v in k["stalls"])
            lines += ["", "| stall reason | cycles per issued instruction | share |", "|---|---|---|"]
            lines += [f"| {r} | {v:.2f} | {v / total:.0%} |" for r, v in k["stalls"][:10]]
        lines.append("")
    if "sass" in s:
        sa = s["sass"]
        if sa["stall_samples"]:
            total = sum(v for _, v in sa["stall_samples"])
            lines += ["Sampled warp states over the whole kernel (SASS page):", "", "| state | samples | share |",
                      "|---|---|---|"]
            lines += [f"| {r} | {v:,.0f} | {v / total:.1%} |" for r, v in sa["stall_samples"][:12]]
            lines.append("")
        lines += [f"Instructions where sampled warps waited most ({sa['column']}, {sa['samples']:,.0f} samples):", "",
                  "| address | SASS | share | main state |", "|---|---|---|---|"]
        lines += [f"| {t['address'][-5:]} | `{t['sass'][:70]}` | {t['share']:.1%} | {t['stall'] or ''} |"
                  for t in sa["top"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("raw", type=Path, help="ncu --page raw --csv output (.csv or .csv.gz)")
    ap.add_argument("--sass", type=Path, default=None, help="ncu --page source --print-source sass --csv output")
    ap.add_argument("--json", type=Path, default=None, help="also write the digest as JSON here")
    args = ap.parse_args(argv)
    for p in (args.raw, args.sass):
        if p is not None and not p.exists():
            raise SystemExit(f"ncu_summary: no such file: {p}")
    s = summarize(args.raw, args.sass)
    print(markdown(s))
    if args.json:
        args.json.write_text(json.dumps(s, indent=2) + "\n")
    return s


if __name__ == "__main__":
    main()
