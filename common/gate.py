"""Acceptance-criterion gates: run each criterion live, print a table, exit non-zero on any failure.

A criterion that cannot run here (no CUDA) is SKIPPED with its reason, never passed; where a GPU run was recorded
in results/, the skip reason quotes it so the reader sees the last measured value and where it came from.

    def criteria():
        yield Criterion("KV cache speed-up at 512 tokens", ">= 10x", check_fn)
    sys.exit(run_gate("Phase 0", criteria()))
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Callable, Iterable

import torch


@dataclass
class Outcome:
    measured: str
    passed: bool | None  # None = skipped
    reason: str = ""


def passed(measured, ok: bool, reason: str = "") -> Outcome:
    return Outcome(str(measured), bool(ok), reason)


def skipped(reason: str) -> Outcome:
    return Outcome("-", None, reason)


def max_abs_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| in fp32, and inf when the difference holds a NaN or inf anywhere.

    NOTE: criteria fold errors with Python's max(worst, err), and max(0.0, nan) is 0.0 (every comparison with NaN is
    False), so a kernel that leaves NaN rows would report "max err 0.0" and pass; mapping non-finite to inf makes such
    a kernel fail the `err < tol` test wherever it is folded in."""
    d = (got.float() - want.float()).abs()
    return d.max().item() if bool(torch.isfinite(d).all()) else float("inf")


@dataclass
class Criterion:
    name: str
    threshold: str
    check: Callable[[], Outcome]
    needs_cuda: bool = False
    recorded: Callable[[], str | None] | None = None  # describes a recorded GPU result, shown when skipped


def recorded_result(phase: str, name: str, describe: Callable[[dict], str],
                    meets: Callable[[dict], bool] | None = None) -> Callable[[], str]:
    """A `recorded=` callable: quotes results/<name>.json (what, device, date) and whether it met the threshold."""
    from common.bench import load_result

    def text() -> str:
        r = load_result(phase, name)
        if r is None:
            return "no GPU run recorded yet"
        verdict = "" if meets is None else (" — meets the threshold" if meets(r) else " — MISSES the threshold")
        return (f"{describe(r)} on {r['provenance']['device']} ({r['provenance']['date'][:10]}, "
                f"results/{name}.json){verdict}")
    return text


def cuda_skip_reason(recorded: str | None = None) -> str:
    msg = "skipped (needs CUDA)"
    return f"{msg}; recorded: {recorded}" if recorded else msg


def evaluate(c: Criterion) -> tuple[Outcome, float]:
    t0 = time.perf_counter()
    if c.needs_cuda and not torch.cuda.is_available():
        rec = c.recorded() if c.recorded else None
        return skipped(cuda_skip_reason(rec)), 0.0
    try:
        out = c.check()
    except Exception as e:  # a crash is a failure with its cause, not a skip
        out = Outcome("error", False, f"{type(e).__name__}: {e}")
        traceback.print_exc()
    return out, time.perf_counter() - t0


def run_gate(title: str, criteria: Iterable[Criterion]) -> int:
    rows = []
    print(f"== {title} ==")
    for c in criteria:
        print(f"  checking: {c.name} ...", flush=True)
        out, secs = evaluate(c)
        status = {True: "PASS", False: "FAIL", None: "SKIP"}[out.passed]
        rows.append((c.name, c.threshold, out.measured, status, out.reason, secs))
    w = [max(len(str(r[i])) for r in rows + [("criterion", "threshold", "measured", "status")]) for i in range(4)]
    head = ("criterion", "threshold", "measured", "status")
    print("\n" + "  ".join(h.ljust(w[i]) for i, h in enumerate(head)) + "  note")
    print("  ".join("-" * x for x in w) + "  ----")
    for r in rows:
        print("  ".join(str(r[i]).ljust(w[i]) for i in range(4)) + f"  {r[4]}" + (f" ({r[5]:.0f}s)" if r[5] > 1 else ""))
    n_fail = sum(r[3] == "FAIL" for r in rows)
    n_skip = sum(r[3] == "SKIP" for r in rows)
    n_pass = sum(r[3] == "PASS" for r in rows)
    print(f"\n{title}: {n_pass} passed, {n_fail} failed, {n_skip} skipped")
    return 1 if n_fail else 0
