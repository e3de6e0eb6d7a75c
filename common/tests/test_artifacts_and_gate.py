import pytest

from common import artifacts
from common.gate import Criterion, passed, run_gate


def test_every_entry_resolves():
    """get() raises for a missing module / attribute; every deliverable is a function or class, so each entry must
    also be callable (`is not None` let an entry pointing at a constant or a None placeholder through)."""
    for name in artifacts.TABLE:
        assert callable(artifacts.get(name)), name


def test_override_by_environment(monkeypatch):
    monkeypatch.setenv("TITAN_ARTIFACTS", "engine.generate=phase0_tinyllama.inference_v0:generate")
    from phase0_tinyllama import inference_v0

    assert artifacts.get("engine.generate") is inference_v0.generate
    monkeypatch.delenv("TITAN_ARTIFACTS")
    from phase0_tinyllama import inference_v1

    assert artifacts.get("engine.generate") is inference_v1.generate


def test_override_by_file(tmp_path, monkeypatch):
    f = tmp_path / "mine.txt"
    f.write_text("# my implementations\nsampling.sample = common.sampling:filter_logits\n")
    monkeypatch.setenv("TITAN_ARTIFACTS_FILE", str(f))
    assert artifacts.target("sampling.sample") == "common.sampling:filter_logits"
    assert "(override)" in artifacts.table_of_contents()


def test_unknown_entry():
    with pytest.raises(KeyError, match="no artifact named"):
        artifacts.get("no.such.thing")


def test_gate_fails_skips_and_passes(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    crits = [Criterion("ok", ">= 1", lambda: passed(2, True)),
             Criterion("gpu thing", ">= 1", lambda: passed(2, True), needs_cuda=True, recorded=lambda: "3 on H100")]
    assert run_gate("t", crits) == 0
    out = capsys.readouterr().out
    assert "SKIP" in out and "skipped (needs CUDA); recorded: 3 on H100" in out and "1 passed, 0 failed, 1 skipped" in out
    assert run_gate("t", [Criterion("bad", ">= 1", lambda: passed(0, False))]) == 1
    assert run_gate("t", [Criterion("crash", "-", lambda: 1 / 0)]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_recorded_result_quotes_file_and_verdict(tmp_path, monkeypatch):
    import json

    from common import bench
    from common.gate import recorded_result

    monkeypatch.setattr(bench, "REPO_ROOT", tmp_path)
    (tmp_path / "ph" / "results").mkdir(parents=True)
    prov = {"device": "NVIDIA H100 80GB HBM3", "date": "2026-11-25T10:00:00+00:00"}
    (tmp_path / "ph" / "results" / "x.json").write_text(json.dumps({"provenance": prov, "v": 3.0}))
    ok = recorded_result("ph", "x", lambda r: f"{r['v']}x", lambda r: r["v"] >= 2)()
    bad = recorded_result("ph", "x", lambda r: f"{r['v']}x", lambda r: r["v"] >= 5)()
    assert ok.startswith("3.0x on NVIDIA H100") and "meets the threshold" in ok
    assert "MISSES the threshold" in bad
    assert recorded_result("ph", "absent", str)() == "no GPU run recorded yet"


def test_get_or_fallback(monkeypatch):
    """The fallback entry serves only when the TABLE's own target cannot be imported (phase 1's wheel not built);
    an override that fails to import raises (falling back would run the reference instead of the learner's code).
    Both users: phase 3's PagedKVCache and phase 4's KVCacheManager."""
    from phase4_scheduler.kv_manager import KVCacheManager

    monkeypatch.setitem(artifacts.TABLE, "allocator.block_table", "no_such_wheel.mod:BlockTableManager")
    obj, name = artifacts.get_or_fallback("allocator.block_table", "allocator.block_table_ref")
    assert name == "allocator.block_table_ref" and obj is artifacts.get("allocator.block_table_ref")
    assert KVCacheManager(4).source == "allocator.block_table_ref"
    monkeypatch.undo()
    monkeypatch.setenv("TITAN_ARTIFACTS", "allocator.block_table=my_alloc.tables:BlockTableManager")
    with pytest.raises(ImportError, match="my_alloc.tables"):
        artifacts.get_or_fallback("allocator.block_table", "allocator.block_table_ref")
    with pytest.raises(ImportError, match="my_alloc.tables"):
        KVCacheManager(4)  # it fell back to the reference before


def test_max_abs_err_turns_non_finite_into_inf():
    """Gate criteria fold errors with max(); max(0.0, nan) is 0.0, so NaN must become inf to fail `err < tol`."""
    import torch

    from common.gate import max_abs_err

    a = torch.tensor([1.0, 2.0, 3.0])
    assert max_abs_err(a, a + torch.tensor([0.0, -0.5, 0.25])) == 0.5
    for bad in (float("nan"), float("inf")):
        b = a.clone()
        b[1] = bad
        assert max_abs_err(b, a) == float("inf") and max_abs_err(a, b) == float("inf")
        assert max(0.0, max_abs_err(b, a)) == float("inf")
    assert max_abs_err(a.bfloat16(), a) == 0.0  # compared in fp32
