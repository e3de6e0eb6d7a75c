"""Rebuild bench_mla.json's summary OFFLINE (no GPU) after one of its sections was measured in another device call.

The MLA sweep (results/bench_mla.json) and the GQA-8 baseline (results/bench_mla_gqa.json) were measured in two
device calls: the `gqa_dsv3` section of the sweep's run failed, and was re-measured alone on a later machine start.
`merge_gqa` folds the recorded GQA section into the sweep's record and recomputes the summary with
`bench_mla.summarize` from the recorded sections only:

    PYTHONPATH=. python -m phase2_mla.bench_mla --merge-gqa phase2_mla/results/bench_mla_gqa.json

NOTE (design): no number is produced here, only ratios of recorded ones. The sweep's own `provenance` stays the
record's provenance, the GQA file's becomes `gqa_provenance`, and the summary says in words (`gqa_note`) that the
MLA/GQA ratio spans two device calls, and sets the GQA bandwidth against the copy ceiling of the MLA run (the GQA
call measured none). The sweep's error for the failed section is kept under `superseded_errors`, not dropped.
"""
from __future__ import annotations

import json

from common.bench import load_result, provenance, results_dir
from phase2_mla.bench_mla import summarize

SHAPE_KEYS = (("batch", "batch"), ("heads", "hq"), ("ctx", "ctx"))  # MLA section key, GQA section key


def _where(p: dict) -> str:
    return f"{p.get('device')}, commit {p.get('commit')}, {p.get('date')}"


def merge_gqa(res: dict, gqa: dict, source: str = "results/bench_mla_gqa.json") -> dict:
    """A copy of the bench_mla record `res` with `gqa` (a recorded `gqa_decode` section plus its provenance) as its
    `gqa_dsv3` section and the summary recomputed. Raises ValueError if the two were not measured at one shape."""
    mla = res.get("mla_dsv3")
    if not mla or "provenance" not in res or "provenance" not in gqa or "best" not in gqa:
        raise ValueError("need a bench_mla record with provenance and mla_dsv3, and a GQA record with provenance "
                         "and best")
    for mk, gk in SHAPE_KEYS:
        if mla[mk] != gqa[gk]:
            raise ValueError(f"the GQA baseline was measured at {gk}={gqa[gk]}, the MLA sweep at {mk}={mla[mk]}")
    out = {k: v for k, v in res.items() if k != "summary"}
    out["gqa_dsv3"] = {k: v for k, v in gqa.items() if k != "provenance"}
    out["gqa_provenance"] = {**gqa["provenance"], "source": source}
    errors = dict(res.get("errors") or {})
    if "gqa_dsv3" in errors:
        out["superseded_errors"] = {**res.get("superseded_errors", {}),
                                    "gqa_dsv3": {"error": errors.pop("gqa_dsv3"), "replaced_by": source}}
    out["errors"] = errors
    ceil = res["copy_ceiling"]["tb_s"]
    s = summarize(out, ceil, (res.get("summary") or {}).get("seconds"))  # seconds: the sweep run's own
    g = out["gqa_dsv3"]["best"]
    s["mla_provenance"] = _where(res["provenance"])
    s["gqa_provenance"] = _where(gqa["provenance"])
    s["gqa_same_call_as_mla"] = False
    s["gqa_dsv3_tb_s"] = g["tb_s"]
    s["gqa_dsv3_over_mla_run_copy_ceiling"] = g["tb_s"] / ceil
    s["gqa_note"] = (f"MLA/GQA = {s['mla_over_gqa_time']:.2f} spans two device calls: MLA from {s['mla_provenance']};"
                     f" GQA-8 from {s['gqa_provenance']} ({source}). The GQA call measured no copy ceiling; its "
                     f"{g['tb_s']:.2f} TB/s is {s['gqa_dsv3_over_mla_run_copy_ceiling']:.0%} of the MLA run's "
                     f"{ceil:.2f} TB/s.")
    out["summary"] = s
    m = provenance()
    out["merged_offline"] = {"date": m["date"], "commit": m["commit"], "command": m["command"], "host": m["host"],
                             "what": "summary recomputed from the recorded sections by phase2_mla.bench_merge"}
    return out


def main(gqa_path: str) -> int:
    res = load_result("phase2_mla", "bench_mla")
    if res is None:
        raise SystemExit("no phase2_mla/results/bench_mla.json to merge into")
    with open(gqa_path) as f:
        gqa = json.load(f)
    out = merge_gqa(res, gqa, source=f"results/{gqa_path.rsplit('/', 1)[-1]}")
    path = results_dir("phase2_mla") / "bench_mla.json"  # written as is: the sweep's provenance stays
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    s = out["summary"]
    print(f"wrote {path}: MLA {s['mla_us']:.1f} us ({s['mla_tb_s']:.2f} TB/s), GQA-8 {s['gqa_dsv3_ms'] * 1e3:.1f} us "
          f"({s['gqa_dsv3_source']}), mla_over_gqa_time={s['mla_over_gqa_time']:.2f}")
    print(s["gqa_note"])
    return 0
