"""The CPU KV-cache criterion's text: a failure on a busy machine says what the load was (the ratio moves with it:
12.7x on 2 idle cores, 7.1x once at a load average of 3-6), a pass stays plain. The benchmark itself is stubbed."""
import phase0_tinyllama.bench_kvcache as bench_kvcache
from phase0_tinyllama import gate


def _stub(monkeypatch, speedup, load):
    row = {"speedup": speedup, "seconds_no_cache": 270.0 * speedup / 12.7, "seconds_kv_cache": 21.0}
    monkeypatch.setattr(bench_kvcache, "main", lambda argv: {"rows": [row]})
    monkeypatch.setattr(gate.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(gate.os, "cpu_count", lambda: 2)


def test_failure_on_a_busy_machine_names_the_load(monkeypatch):
    _stub(monkeypatch, 7.1, 5.0)
    out = gate.check_kv_speedup_cpu()
    assert out.passed is False and "load average 5.0 on 2 cores" in out.measured and "idle machine" in out.measured


def test_failure_on_an_idle_machine_and_a_pass(monkeypatch):
    _stub(monkeypatch, 7.1, 0.2)
    out = gate.check_kv_speedup_cpu()
    assert out.passed is False and "load average 0.2" in out.measured and "idle machine" not in out.measured
    _stub(monkeypatch, 12.7, 5.0)
    out = gate.check_kv_speedup_cpu()
    assert out.passed is True and out.measured == "12.7x (270 s vs 21 s)"
