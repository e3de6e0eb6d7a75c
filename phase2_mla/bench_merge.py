"""Fold a section of bench_mla.json that was measured in another device call back into it, OFFLINE (no GPU).

Two sections were measured apart from the MLA sweep (results/bench_mla.json):
- the GQA-8 baseline (results/bench_mla_gqa.json): the sweep's own `gqa_dsv3` section failed and was re-measured
  alone on a later machine start;
- RoPE (results/bench_mla_rope.json, `bench_mla --only rope`): the sweep's run was `--only mla,gqa`, so its record
  had no RoPE rows; RoPE was re-measured after the decode-shape fix (cold L2, same-size copy per shape).

    PYTHONPATH=. python -m phase2_mla.bench_mla --merge-gqa phase2_mla/results/bench_mla_gqa.json
    PYTHONPATH=. python -m phase2_mla.bench_mla --merge-rope phase2_mla/results/bench_mla_rope.json

Those two merges built the H100 record of 2026-11-25, kept since as results/bench_mla_h100.json; bench_mla.json is
now a single H100 call with every section (2026-12-06, bench_mla_s1209f_h100.json; the H200 run of 2026-12-05 is
bench_mla_s1205_h200.json), so nothing needs merging; a merge needs both records from the same GPU model (`main`
compares the provenances' `device`).

NOTE (design): no number is produced here, only ratios of recorded ones. The sweep's own `provenance` stays the
record's provenance; the other file's becomes `gqa_provenance` / `rope_provenance` (with its `source`), and the
summary is recomputed with `bench_mla.summarize` from the recorded sections, keeping the fields earlier merges
added (`gqa_note`, ...). The summary says in words which device calls a figure spans. A section error of the sweep
that a merge replaces is kept under `superseded_errors`, not dropped. `merged_offline` names the latest merge and,
under `sections`, every merge that built the record.
"""
from __future__ import annotations

import json
import sys

from common.bench import load_result, provenance, results_dir
from phase2_mla.bench_mla import summarize

SHAPE_KEYS = (("batch", "batch"), ("heads", "hq"), ("ctx", "ctx"))  # MLA section key, GQA section key


def _where(p: dict) -> str:
    return f"{p.get('device')}, commit {p.get('commit')}, {p.get('date')}"


def _merged(res: dict, section: str, data, prov: dict, source: str) -> dict:
    """A copy of `res` with `data` as `section`, `prov` as `<kind>_provenance`, a replaced error superseded."""
    kind = "gqa" if section == "gqa_dsv3" else section
    out = {k: v for k, v in res.items() if k != "summary"}
    out[section] = data
    out[f"{kind}_provenance"] = {**prov, "source": source}
    errors = dict(res.get("errors") or {})
    if section in errors:
        out["superseded_errors"] = {**res.get("superseded_errors", {}),
                                    section: {"error": errors.pop(section), "replaced_by": source}}
    out["errors"] = errors
    return out


def _summary(out: dict, res: dict) -> dict:
    """summarize() on the merged sections, over the earlier summary's merge-only fields (gqa_note, ...)."""
    old = res.get("summary") or {}
    fresh = summarize(out, res["copy_ceiling"]["tb_s"], old.get("seconds"))  # seconds: the sweep run's own
    return {**fresh, **{k: v for k, v in old.items() if k not in fresh}}


def _stamp(out: dict, res: dict, section: str, source: str) -> None:
    m = provenance()
    entry = {"date": m["date"], "commit": m["commit"], "command": m["command"], "host": m["host"], "source": source}
    prev = res.get("merged_offline") or {}
    sections = dict(prev.get("sections") or {})
    if prev and not sections and "gqa_provenance" in res:  # a record merged before `sections` existed
        sections["gqa_dsv3"] = {k: prev.get(k) for k in ("date", "commit", "command", "host")}
    sections[section] = entry
    out["merged_offline"] = {**{k: entry[k] for k in ("date", "commit", "command", "host")},
                             "what": "summary recomputed from the recorded sections by phase2_mla.bench_merge",
                             "sections": sections}


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
    out = _merged(res, "gqa_dsv3", {k: v for k, v in gqa.items() if k != "provenance"}, gqa["provenance"], source)
    ceil = res["copy_ceiling"]["tb_s"]
    s = _summary(out, res)
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
    _stamp(out, res, "gqa_dsv3", source)
    return out


def merge_rope(res: dict, rope: dict, source: str = "results/bench_mla_rope.json") -> dict:
    """A copy of the bench_mla record `res` with the `rope` rows of a separately recorded `--only rope` run and the
    summary recomputed. The rows' percentages stay relative to the copy ceiling of THEIR call (`rope_copy_ceiling`),
    and to the same-size copy each row timed itself. Raises ValueError on a record that cannot be merged."""
    rows = rope.get("rope")
    if "provenance" not in res or "copy_ceiling" not in res or "provenance" not in rope:
        raise ValueError("need a bench_mla record with provenance and copy_ceiling, and a RoPE record with provenance")
    if not rows or "copy_ceiling" not in rope:
        err = (rope.get("errors") or {}).get("rope")
        raise ValueError("the RoPE record has no rope rows or no copy_ceiling" + (f" (its error: {err})" if err else ""))
    for r in rows:
        if not all(isinstance(r.get(i), dict) and "pct_of_copy_ceiling" in r[i] for i in ("cuda", "triton")):
            raise ValueError(f"RoPE row {r.get('shape')!r} lacks cuda/triton pct_of_copy_ceiling")
    out = _merged(res, "rope", rows, rope["provenance"], source)
    out["rope_copy_ceiling"] = rope["copy_ceiling"]
    s = _summary(out, res)
    rc, ceil = rope["copy_ceiling"]["tb_s"], res["copy_ceiling"]["tb_s"]
    s["rope_provenance"] = _where(rope["provenance"])
    s["rope_copy_ceiling_tb_s"] = rc
    s["rope_note"] = (f"RoPE rows from {s['rope_provenance']} ({source}), a separate device call from the MLA sweep "
                      f"({_where(res['provenance'])}). Their % of ceiling is of the {rc:.2f} TB/s copy ceiling "
                      f"measured in the RoPE call (the sweep's: {ceil:.2f} TB/s); their % of same-size copy is of a "
                      f"copy of the same bytes timed in that call, at each shape.")
    out["summary"] = s
    _stamp(out, res, "rope", source)
    return out


def main(path: str, kind: str = "gqa") -> int:
    res = load_result("phase2_mla", "bench_mla")
    if res is None:
        raise SystemExit("no phase2_mla/results/bench_mla.json to merge into")
    with open(path) as f:
        rec = json.load(f)
    source = f"results/{path.rsplit('/', 1)[-1]}"
    have, new = (res.get("provenance") or {}).get("device"), (rec.get("provenance") or {}).get("device")
    if have != new:  # two machine starts of one GPU model may share a record; two GPU models may not
        print(f"bench_merge: {source} was measured on {new}, results/bench_mla.json on {have}: merging would mix two "
              "GPU models in one record. Nothing written. (The H100 record these merges built is "
              "results/bench_mla_h100.json.)", file=sys.stderr)
        return 1
    out = (merge_gqa if kind == "gqa" else merge_rope)(res, rec, source=source)
    dest = results_dir("phase2_mla") / "bench_mla.json"  # written as is: the sweep's provenance stays
    dest.write_text(json.dumps(out, indent=2, default=str) + "\n")
    s = out["summary"]
    print(f"wrote {dest}")
    if kind == "gqa":
        print(f"MLA {s['mla_us']:.1f} us ({s['mla_tb_s']:.2f} TB/s), GQA-8 {s['gqa_dsv3_ms'] * 1e3:.1f} us "
              f"({s['gqa_dsv3_source']}), mla_over_gqa_time={s['mla_over_gqa_time']:.2f}")
        print(s["gqa_note"])
    else:
        for r in out["rope"]:
            print(f"  {r['shape']}: cuda {r['cuda']['tb_s']:.2f} TB/s, triton {r['triton']['tb_s']:.2f} TB/s")
        print(s["rope_note"])
    return 0
