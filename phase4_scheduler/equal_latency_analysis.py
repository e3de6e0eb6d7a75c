"""The analysis half of bench_equal_latency: percentiles, saturation tests, the highest rate a policy sustains at a
latency target, and the continuous/static comparison with its bracket. Pure functions over the swept points (dicts
from bench_equal_latency.summarize_point): tested on CPU with synthetic curves.

NOTE (saturation): past its capacity mu a FCFS queue's waiting time grows linearly: the i-th request arrives at
i/rate and starts at ~i/mu, so it waits (rate/mu - 1) seconds more per second of arrivals. A point is saturated when
the least-squares slope of TTFT against arrival time exceeds a threshold AND admissions keep leaving requests
waiting (see is_saturated); the comparison never interpolates into a saturated point: it brackets instead.
"""
from __future__ import annotations

import numpy as np


def percentiles(xs) -> dict:
    xs = np.asarray(xs, dtype=float)
    if xs.size == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    p = np.percentile(xs, [50, 90, 99])
    return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2]), "mean": float(xs.mean())}


def queue_growth(arrival, ttft, warmup_frac: float = 0.1) -> float:
    """d(TTFT)/d(arrival time) by least squares, after dropping the first `warmup_frac` of requests (by arrival).
    ~0 for a stable queue; (rate/capacity - 1) for an overloaded FCFS queue."""
    order = np.argsort(np.asarray(arrival, dtype=float))
    a, t = np.asarray(arrival, dtype=float)[order], np.asarray(ttft, dtype=float)[order]
    k = int(len(a) * warmup_frac)
    a, t = a[k:], t[k:]
    if len(a) < 3 or np.ptp(a) == 0:
        return 0.0
    return float(np.polyfit(a, t, 1)[0])


def left_behind(admissions, arrival) -> float:
    """Of the admission steps in the second half of the arrival window (else the last one before the last arrival),
    the fraction that left requests waiting: seats (or KV) full. A stable system's admissions drain the queue."""
    if not admissions or len(arrival) == 0:
        return 0.0
    lo, hi = float(np.min(arrival)), float(np.max(arrival))
    ev = [w for t, w in admissions if (lo + hi) / 2 <= t <= hi] or [w for t, w in admissions if t <= hi][-1:]
    return float(np.mean([w > 0 for w in ev])) if ev else 0.0


def is_saturated(point: dict, max_slope: float) -> bool:
    """Overran its time limit, or the wait grows (TTFT slope) while admissions leave requests behind: the slope
    alone is noisy for static batching (TTFT is a sawtooth of batch-long period), a full queue alone is a burst."""
    return bool(point["timed_out"] or (point["queue_growth"] > max_slope and point["left_behind"] >= 0.5))


def _offered(p: dict) -> float:
    """What a point offered (a saturated point's capacity lies below it); synthetic curves carry only output_tok_s."""
    return p.get("offered_tok_s", p["output_tok_s"])


def max_rate_at_latency(points: list[dict], target: float, key: str = "e2e_p50") -> dict:
    """The highest rate (and output tok/s) with points[key] <= target, from a sweep sorted or not by rate.

    Looks at the stable points below the first saturated one and takes the HIGHEST rate that meets the target (a
    static batcher's p50 is a sawtooth in the rate: a lower rate can miss a target a higher one meets). From there:
    the next point above the target -> linear interpolation between the two (limited_by 'latency'); the next point
    saturated -> that rate (limited_by 'saturation'; `rate_upper` / `output_tok_s_upper` what the saturated one
    offered: the bracket); no next point -> 'sweep_end' (a lower bound, no upper). Nowhere below the target: rate
    None, limited_by 'target_below_sweep' (or 'saturation' if the first point is saturated already)."""
    if not target > 0:
        raise ValueError(f"the latency target must be > 0 seconds, got {target}")
    pts = sorted(points, key=lambda p: p["rate"])
    if not pts:
        raise ValueError("no swept points")
    cut = next((i for i, p in enumerate(pts) if p["saturated"]), len(pts))
    stable, sat = pts[:cut], (pts[cut] if cut < len(pts) else None)
    meets = [i for i, p in enumerate(stable) if p[key] <= target]
    if not meets:
        first = stable[0] if stable else sat
        return {"rate": None, "output_tok_s": None,
                "limited_by": "target_below_sweep" if stable else "saturation", "rate_upper": first["rate"],
                "output_tok_s_upper": first["output_tok_s"] if stable else _offered(first)}
    i = meets[-1]
    best = stable[i]
    if i + 1 < len(stable):  # the next stable point misses the target: interpolate toward it
        nxt = stable[i + 1]
        f = (target - best[key]) / (nxt[key] - best[key])
        rate = best["rate"] + f * (nxt["rate"] - best["rate"])
        tok = best["output_tok_s"] + f * (nxt["output_tok_s"] - best["output_tok_s"])
        return {"rate": rate, "output_tok_s": tok, "limited_by": "latency", "rate_upper": rate,
                "output_tok_s_upper": tok}
    if sat is not None:
        return {"rate": best["rate"], "output_tok_s": best["output_tok_s"], "limited_by": "saturation",
                "rate_upper": sat["rate"], "output_tok_s_upper": max(best["output_tok_s"], _offered(sat))}
    return {"rate": best["rate"], "output_tok_s": best["output_tok_s"], "limited_by": "sweep_end",
            "rate_upper": None, "output_tok_s_upper": None}


def compare_at(cont: list[dict], static: list[dict], target: float) -> dict:
    """continuous / static output throughput at one p50 target, with the bracket the saturation bounds allow."""
    c, s = max_rate_at_latency(cont, target), max_rate_at_latency(static, target)
    row = {"target_p50_s": target, "continuous": c, "static": s, "ratio": None, "ratio_low": None, "ratio_high": None}
    if c["output_tok_s"] and s["output_tok_s"]:
        row["ratio"] = c["output_tok_s"] / s["output_tok_s"]
        row["ratio_low"] = c["output_tok_s"] / (s["output_tok_s_upper"] or float("inf"))
        row["ratio_high"] = (c["output_tok_s_upper"] / s["output_tok_s"]) if c["output_tok_s_upper"] else None
    return row


def best_stable(points: list[dict]) -> dict | None:
    """The highest-throughput point that is not saturated (a policy 'at its best')."""
    ok = [p for p in points if not p["saturated"]]
    return max(ok, key=lambda p: p["output_tok_s"]) if ok else None


def comparisons(policies: dict[str, list[dict]], targets: list[float]) -> list[dict]:
    """For each static variant: at the p50 of that variant at its best, and at each given target."""
    rows, cont = [], policies.get("continuous")
    if not cont:
        return rows
    for name in ("static", "static_padded"):
        pts = policies.get(name)
        if not pts:
            continue
        best = best_stable(pts)
        ts = ([("p50 of %s at its best" % name, best["e2e_p50"])] if best else []) + [("given", t) for t in targets]
        for why, t in ts:
            rows.append({"baseline": name, "target": why, **compare_at(cont, pts, t)})
    return rows


def refine_rates(points: list[dict], n: int) -> list[float]:
    """n rates evenly between the last stable and the first saturated point of a sweep (none without such a pair)."""
    if n < 1 or len(points) < 2 or not points[-1]["saturated"] or points[-2]["saturated"]:
        return []
    lo, hi = points[-2]["rate"], points[-1]["rate"]
    return [lo + (hi - lo) * k / (n + 1) for k in range(1, n + 1)]
