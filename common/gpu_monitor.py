"""GPU utilisation while a block of code runs: `nvidia-smi` sampled in the background.

    with GpuMonitor(interval_ms=50) as mon:
        llm.generate(...)
    mon.summary()   # {"samples": 84, "util_mean_pct": 93.1, "util_p50_pct": 100.0, "mem_used_max_mib": 61234, ...}

What the number means: NVML's `utilization.gpu` is the share of the last sample period in which at least one kernel
was running on the GPU. It says whether the GPU was kept busy (host gaps, launch-bound steps, waiting on Python show
up as < 100%), not how well each kernel used the SMs or HBM: a GEMV streaming weights at 50% of the bandwidth still
counts as 100% busy. Read it beside the roofline figures, never instead of them.

On a machine without `nvidia-smi` (CPU CI) the monitor records nothing and `summary()` says why (`reason`), so a
benchmark can carry the field on every device without pretending to a measurement.
"""
from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time

QUERY = "utilization.gpu,utilization.memory,memory.used"


def parse_line(line: str) -> dict | None:
    """One `nvidia-smi --format=csv,noheader,nounits` line of QUERY -> {util, mem_util, mem_used_mib}; None if the
    line is not three numbers (a header, '[N/A]', a truncated last line)."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 3:
        return None
    try:
        util, mem_util, used = (float(p) for p in parts)
    except ValueError:
        return None
    return {"util": util, "mem_util": mem_util, "mem_used_mib": used}


def summarize(samples: list[dict], seconds: float) -> dict:
    """Summary of parsed samples over a window of `seconds` (pure: tested on CPU)."""
    if not samples:
        return {"samples": 0, "seconds": seconds, "reason": "no samples (window shorter than the sample period?)"}
    util = [s["util"] for s in samples]
    return {"samples": len(samples), "seconds": seconds,
            "util_mean_pct": statistics.fmean(util), "util_p50_pct": statistics.median(util),
            "util_min_pct": min(util), "share_of_samples_at_100_pct": sum(u >= 100 for u in util) / len(util),
            "mem_bw_util_mean_pct": statistics.fmean(s["mem_util"] for s in samples),
            "mem_used_max_mib": max(s["mem_used_mib"] for s in samples)}


class GpuMonitor:
    """Context manager sampling GPU `index` every `interval_ms` (nvidia-smi's own loop, read by a thread)."""

    def __init__(self, interval_ms: int = 50, index: int = 0, command: list[str] | None = None):
        if interval_ms < 10:
            raise ValueError(f"interval_ms must be >= 10 (nvidia-smi's floor), got {interval_ms}")
        self.command = command or ["nvidia-smi", f"--id={index}", f"--query-gpu={QUERY}",
                                   "--format=csv,noheader,nounits", f"-lms={interval_ms}"]
        self.samples: list[dict] = []
        self.reason: str | None = None
        self._proc = None
        self._thread = None
        self._t0 = self._t1 = None

    def __enter__(self) -> "GpuMonitor":
        if shutil.which(self.command[0]) is None:
            self.reason = f"{self.command[0]} not found (no NVIDIA GPU here)"
            return self
        self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            s = parse_line(line)
            if s is not None:
                self.samples.append(s)

    def __exit__(self, *exc) -> None:
        self._t1 = time.perf_counter()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._thread.join(timeout=5)
            if not self.samples and self._proc.returncode not in (0, -15, None):
                self.reason = f"{self.command[0]} exited with {self._proc.returncode}"

    def summary(self) -> dict:
        if self.reason is not None:
            return {"samples": 0, "reason": self.reason}
        seconds = (self._t1 or time.perf_counter()) - (self._t0 or time.perf_counter())
        return summarize(self.samples, seconds)
