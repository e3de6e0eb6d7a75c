"""contention_mla (the per-program slowdown diagnostic, run on the GPU machine): its streaming read kernel sums what
it reads (the interpreter here), and on a CPU machine the script refuses clearly."""
import pytest
import torch

from phase2_mla import contention_mla as cm


def test_read_kernel_reads_each_slice_reps_times():
    progs, per_prog, reps = 3, 2 * cm.READ_BLOCK, 2
    x = torch.arange(progs * per_prog, dtype=torch.float32) % 7
    out = torch.empty(progs * cm.READ_BLOCK)
    cm.read_kernel[(progs,)](x, out, progs, ITERS=per_prog // cm.READ_BLOCK, REPS=reps, BLOCK=cm.READ_BLOCK)
    sums = x.view(progs, per_prog // cm.READ_BLOCK, cm.READ_BLOCK).sum(1)  # [slice, BLOCK]
    want = sum(sums.roll(-r, 0) for r in range(reps))  # pass r: program p reads slice (p + r) % progs
    torch.testing.assert_close(out.view(progs, cm.READ_BLOCK), want)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this runs the benchmark")
def test_contention_needs_hopper_and_says_so(capsys):
    assert cm.main(["--rounds", "1"]) == 1
    assert "needs a Hopper GPU" in capsys.readouterr().out


def test_clocks_under_summarises_the_readings(monkeypatch):
    """Several nvidia-smi readings while fn runs: the median clock, its range, the union of the reasons given."""
    import shutil
    readings = iter([["1575", "480.5", "700.00", "60", "Active", "Not Active", "Not Active", "Not Active",
                      "Not Active"],
                     ["1605", "500.0", "700.00", "61", "Not Active", "Not Active", "Not Active", "Not Active",
                      "Not Active"],
                     ["1980", "220.0", "700.00", "59", "Not Active", "Not Active", "Not Active", "Not Active",
                      "Active"]])
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(cm, "_smi", lambda fields: next(readings, None))
    calls = []
    r = cm.clocks_under(lambda: calls.append(1), samples=4, interval_s=0.0, settle_s=0.0)
    assert calls and r["clock_samples"] == 3 and r["sm_clock_mhz"] == 1605.0
    assert (r["sm_clock_mhz_min"], r["sm_clock_mhz_max"], r["power_w"]) == (1575.0, 1980.0, 480.5)
    assert r["clock_limited_by"] == ["hw_thermal_slowdown", "sw_power_cap"] and r["temperature_c"] == 61.0
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert cm.clocks_under(lambda: None) == {}


def test_clocks_under_fails_when_the_load_thread_fails(monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(cm, "_smi", lambda fields: ["1980", "100", "700", "40"] + ["Not Active"] * 5)

    def boom():
        raise ValueError("no context")

    with pytest.raises(RuntimeError, match="load thread failed"):
        cm.clocks_under(boom, samples=2, interval_s=0.0, settle_s=0.0)
