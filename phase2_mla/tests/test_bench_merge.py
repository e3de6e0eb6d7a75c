"""bench_merge: the offline summary comes only from the two records, keeps both provenances, rejects a mismatch."""
import copy

import pytest

from phase2_mla.bench_merge import merge_gqa


def _records():
    mla_best = {"block_h": 64, "ms": 0.3, "tb_s": 1.0, "tflops": 240.0}
    res = {"provenance": {"device": "GPU-A", "commit": "aaa", "date": "2026-01-01T10:00:00+00:00"},
           "copy_ceiling": {"tb_s": 3.0}, "errors": {"gqa_dsv3": "RuntimeError: view"},
           "mla_dsv3": {"batch": 4, "heads": 8, "ctx": 128, "rows": [mla_best], "best": mla_best},
           "gqa_tp8": {"best": {"source": "sdpa", "ms": 0.05}},
           "summary": {"seconds": 42.0, "mla_over_gqa_time": None}}
    gqa = {"provenance": {"device": "GPU-A", "commit": "bbb", "date": "2026-01-01T11:00:00+00:00"},
           "batch": 4, "hq": 8, "hkv": 2, "ctx": 128, "sdpa": {"ms": 0.4, "tb_s": 2.7},
           "best": {"source": "sdpa", "ms": 0.4, "tb_s": 2.7}}
    return res, gqa


def test_merge_recomputes_the_summary_from_the_records():
    res, gqa = _records()
    before = copy.deepcopy(res)
    out = merge_gqa(res, gqa)
    assert res == before  # the input record is not modified
    s = out["summary"]
    assert s["mla_over_gqa_time"] == pytest.approx(0.3 / 0.4) and s["gqa_dsv3_ms"] == 0.4
    assert s["gqa_dsv3_over_mla_run_copy_ceiling"] == pytest.approx(2.7 / 3.0)
    assert s["seconds"] == 42.0 and s["mla_tp8_best"] is None
    assert out["provenance"] == res["provenance"] and out["gqa_provenance"]["commit"] == "bbb"
    assert "commit aaa" in s["gqa_note"] and "commit bbb" in s["gqa_note"] and "two device calls" in s["gqa_note"]
    assert out["errors"] == {} and out["superseded_errors"]["gqa_dsv3"]["error"] == "RuntimeError: view"
    assert merge_gqa(out, gqa)["summary"]["mla_over_gqa_time"] == s["mla_over_gqa_time"]  # idempotent


def test_merge_rejects_a_baseline_at_another_shape():
    res, gqa = _records()
    gqa["ctx"] = 4096
    with pytest.raises(ValueError, match="ctx=4096"):
        merge_gqa(res, gqa)
    with pytest.raises(ValueError, match="provenance"):
        merge_gqa(res, {k: v for k, v in gqa.items() if k != "provenance"})
