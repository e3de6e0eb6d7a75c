"""bench_merge: the offline summary comes only from the two records, keeps both provenances, rejects a mismatch."""
import copy

import pytest

from phase2_mla.bench_merge import merge_gqa, merge_rope


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


def _rope_record(ms_cuda=0.02, ms_triton=0.01, copy_ms=0.009):
    """A fabricated `--only rope` record: two rows, one with a same-size copy, timings chosen to test arithmetic."""
    def impl(ms, nbytes):
        return {"ms": ms, "tb_s": nbytes / ms / 1e9, "pct_of_copy_ceiling": nbytes / ms / 1e9 / 3.2,
                "pct_of_same_size_copy": copy_ms / ms}
    rows = [{"shape": f"decode B={b}, x", "bytes": 20e6, "distinct_buffers": 4, "copy_same_bytes_ms": copy_ms,
             "cuda": impl(ms_cuda, 20e6), "triton": impl(ms_triton, 20e6)} for b in (256, 1024)]
    return {"provenance": {"device": "GPU-A", "commit": "ccc", "date": "2026-01-01T12:00:00+00:00"},
            "copy_ceiling": {"tb_s": 3.2}, "errors": {}, "rope": rows, "summary": {"seconds": 9.0}}


def test_rope_merge_adds_rows_and_keeps_the_gqa_merge():
    res, gqa = _records()
    res["errors"]["rope"] = "RuntimeError: old rope failure"
    merged = merge_gqa(res, gqa)
    before = copy.deepcopy(merged)
    out = merge_rope(merged, _rope_record())
    assert merged == before  # the input record is not modified
    s = out["summary"]
    assert out["rope"] == _rope_record()["rope"] and out["rope_copy_ceiling"] == {"tb_s": 3.2}
    assert out["provenance"] == res["provenance"] and out["rope_provenance"]["commit"] == "ccc"
    assert out["rope_provenance"]["source"] == "results/bench_mla_rope.json"
    # the summary is recomputed from the rows: best of CUDA / Triton per shape, on both yardsticks
    assert s["rope_pct_of_same_size_copy"]["decode B=1024, x"] == pytest.approx(0.009 / 0.01)
    assert s["rope_decode_pct_of_ceiling"]["decode B=256, x"] == pytest.approx(20e6 / 0.01 / 1e9 / 3.2)
    # the GQA merge's fields survive, and the MLA/GQA ratio is unchanged
    for k in ("gqa_note", "gqa_provenance", "mla_provenance", "gqa_dsv3_over_mla_run_copy_ceiling"):
        assert s[k] == merged["summary"][k], k
    assert s["mla_over_gqa_time"] == pytest.approx(0.3 / 0.4) and s["seconds"] == 42.0
    assert s["copy_ceiling_tb_s"] == 3.0 and s["rope_copy_ceiling_tb_s"] == 3.2
    assert "commit ccc" in s["rope_note"] and "commit aaa" in s["rope_note"] and "3.20 TB/s" in s["rope_note"]
    assert out["superseded_errors"]["rope"]["error"] == "RuntimeError: old rope failure"
    assert "gqa_dsv3" in out["superseded_errors"] and out["errors"] == {}
    assert set(out["merged_offline"]["sections"]) == {"gqa_dsv3", "rope"}
    again = merge_rope(out, _rope_record())
    assert again["summary"]["rope_pct_of_same_size_copy"] == s["rope_pct_of_same_size_copy"]  # idempotent
    assert again["summary"]["gqa_note"] == s["gqa_note"]


def test_rope_merge_rejects_unusable_records():
    res, _ = _records()
    bad = _rope_record()
    bad["rope"], bad["errors"] = [], {"rope": "OutOfMemoryError"}
    with pytest.raises(ValueError, match="OutOfMemoryError"):
        merge_rope(res, bad)
    with pytest.raises(ValueError, match="provenance"):
        merge_rope(res, {k: v for k, v in _rope_record().items() if k != "provenance"})
    bad = _rope_record()
    del bad["rope"][0]["triton"]
    with pytest.raises(ValueError, match="decode B=256"):
        merge_rope(res, bad)


def test_main_refuses_to_mix_two_gpu_models(tmp_path, monkeypatch, capsys):
    """`bench_mla --merge-gqa` on a record of another GPU model writes nothing and says why (exit 1)."""
    import json

    from phase2_mla import bench_merge

    res, gqa = _records()
    gqa["provenance"]["device"] = "GPU-B"
    monkeypatch.setattr(bench_merge, "load_result", lambda phase, name: res)
    monkeypatch.setenv("TITAN_RESULTS_DIR", str(tmp_path / "out"))
    src = tmp_path / "bench_mla_gqa.json"
    src.write_text(json.dumps(gqa))
    assert bench_merge.main(str(src), "gqa") == 1
    assert "GPU-B" in capsys.readouterr().err and not (tmp_path / "out" / "bench_mla.json").exists()
    gqa["provenance"]["device"] = "GPU-A"  # same model, another machine start: merged
    src.write_text(json.dumps(gqa))
    assert bench_merge.main(str(src), "gqa") == 0 and (tmp_path / "out" / "bench_mla.json").exists()
