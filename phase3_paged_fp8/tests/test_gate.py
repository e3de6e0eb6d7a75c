"""`make phase3`'s kernel criterion: passes live on the interpreter, and fails (never reads 'max |err| 0') when a
kernel leaves NaN rows: Python's max(0.0, nan) is 0.0, so the criterion folds errors through common.gate.max_abs_err."""
import pytest

from phase3_paged_fp8 import gate, paged_decode, paged_prefill


def test_kernels_criterion_passes_live():
    out = gate._kernels()
    assert out.passed, out


@pytest.mark.parametrize("module, name", [(paged_decode, "paged_decode"), (paged_prefill, "paged_prefill")])
def test_kernels_criterion_fails_on_a_nan_row(monkeypatch, module, name):
    real = getattr(module, name)

    def nan_row(*a, **k):
        out = real(*a, **k)
        out[-1] = float("nan")
        return out

    monkeypatch.setattr(module, name, nan_row)
    out = gate._kernels()
    assert out.passed is False and "inf" in out.measured, out
