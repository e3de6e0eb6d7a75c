"""GpuMonitor: parsing, summary arithmetic, and the sampler loop driven by a fake nvidia-smi (CPU)."""
import sys
import time

import pytest

from common.gpu_monitor import GpuMonitor, parse_line, summarize


def test_parse_line_accepts_numbers_and_rejects_the_rest():
    assert parse_line("87, 40, 61234\n") == {"util": 87.0, "mem_util": 40.0, "mem_used_mib": 61234.0}
    for bad in ("utilization.gpu [%], utilization.memory [%], memory.used [MiB]", "[N/A], 3, 100", "87, 40", ""):
        assert parse_line(bad) is None


def test_summarize_statistics():
    s = summarize([{"util": u, "mem_util": 10.0, "mem_used_mib": m} for u, m in ((100, 5), (50, 7), (100, 6))], 2.0)
    assert s["samples"] == 3 and s["seconds"] == 2.0
    assert s["util_mean_pct"] == pytest.approx(250 / 3)
    assert s["util_p50_pct"] == 100 and s["util_min_pct"] == 50
    assert s["share_of_samples_at_100_pct"] == pytest.approx(2 / 3)
    assert s["mem_used_max_mib"] == 7
    assert summarize([], 1.0)["samples"] == 0 and "reason" in summarize([], 1.0)


def test_monitor_reads_a_fake_sampler():
    fake = [sys.executable, "-c", "import time\nfor u in (30, 100, 90): print(f'{u}, 5, 1000', flush=True)\n"
            "print('[N/A], 1, 1', flush=True)\ntime.sleep(30)"]
    with GpuMonitor(command=fake) as mon:
        deadline = time.time() + 20
        while len(mon.samples) < 3 and time.time() < deadline:
            time.sleep(0.02)
    s = mon.summary()
    assert s["samples"] == 3 and s["util_mean_pct"] == pytest.approx(220 / 3), s
    assert mon._proc.poll() is not None  # the sampler was stopped, not left running


def test_monitor_without_nvidia_smi_says_why():
    with GpuMonitor(command=["definitely-not-nvidia-smi-xyz"]) as mon:
        pass
    s = mon.summary()
    assert s["samples"] == 0 and "not found" in s["reason"]
    with pytest.raises(ValueError):
        GpuMonitor(interval_ms=1)
