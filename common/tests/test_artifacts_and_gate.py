import pytest

from common import artifacts
from common.gate import Criterion, passed, run_gate


def test_every_entry_resolves():
    for name in artifacts.TABLE:
        assert artifacts.get(name) is not None, name


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
