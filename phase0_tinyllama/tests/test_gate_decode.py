"""The GPU decode-baseline criterion (check_decode_baseline) with bench_decode stubbed: it passes only when both
B=1 and B=64 were timed beside HF eager, and says what is missing otherwise (before: a KeyError, or a pass)."""
from phase0_tinyllama import bench_decode, gate


def _row(batch, hf=True):
    r = {"batch": batch, "ours": {"ms_per_step": 2.0 * batch}, "ours_pct_of_roofline": 0.4 if batch == 1 else None}
    if hf:
        r["hf_eager"] = {"ms_per_step": 20.0}
    return r


def _stub(monkeypatch, rows):
    monkeypatch.setattr(bench_decode, "main", lambda argv: {"rows": rows})


def test_passes_with_both_batches_beside_hf(monkeypatch):
    _stub(monkeypatch, [_row(1), _row(64)])
    out = gate.check_decode_baseline()
    assert out.passed is True and out.measured == "B=1 2.00 ms/token = 40% of roofline; HF eager 20.00", out


def test_fails_without_hf_or_a_batch(monkeypatch):
    for rows, missing in (([_row(1), _row(64, hf=False)], "[64]"), ([_row(1, hf=False), _row(64, hf=False)], "[1, 64]"),
                          ([_row(1)], "[64]"), ([_row(64)], "[1]")):
        _stub(monkeypatch, rows)
        out = gate.check_decode_baseline()
        assert out.passed is False and f"no HF eager timing at B={missing}" in out.reason, (rows, out)
