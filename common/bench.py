"""Benchmark utilities: timing (CUDA events, medians), memory accounting, device ceilings, provenance, results JSON.

Benchmarks are scripts, never timed tests. Each writes `<phase>/results/<name>.json` through `write_result`, which
stamps provenance (device, versions, commit, date, command); reports and README figures are generated from those.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Ceilings:
    """Peak rates of a device: datasheet figures, and where we have them, figures measured on this project's card."""
    name: str
    hbm_tb_s: float            # datasheet memory bandwidth, TB/s
    bf16_tflops: float         # datasheet dense bf16 tensor-core rate (fp32 accumulate), TFLOP/s
    fp8_tflops: float | None   # datasheet dense fp8 rate, TFLOP/s
    measured_copy_tb_s: float | None = None    # device-to-device copy, bytes read + written (ANCHORS.md)
    measured_bf16_tflops: float | None = None  # cuBLAS 8192^3 bf16 GEMM (ANCHORS.md)

    @property
    def ridge_flop_per_byte(self) -> float:
        return self.bf16_tflops / self.hbm_tb_s


# Datasheets: NVIDIA H100 SXM5, H200 SXM, A100 80GB SXM, Ada whitepaper (RTX 4090). Measured: shared/ANCHORS.md.
CEILINGS: dict[str, Ceilings] = {
    "H100": Ceilings("NVIDIA H100 SXM 80GB", 3.35, 989.4, 1978.9, measured_copy_tb_s=3.0, measured_bf16_tflops=763),
    "H200": Ceilings("NVIDIA H200 SXM 141GB", 4.8, 989.4, 1978.9),
    "A100": Ceilings("NVIDIA A100 SXM 80GB", 2.039, 312.0, None),
    "RTX 4090": Ceilings("NVIDIA GeForce RTX 4090", 1.008, 165.2, 330.3),
}


def ceilings_for(device_name: str) -> Ceilings | None:
    """Match a torch device name ('NVIDIA H100 80GB HBM3') to the table."""
    for key, c in CEILINGS.items():
        if key.replace(" ", "").lower() in device_name.replace(" ", "").lower():
            return c
    return None


def time_fn(fn: Callable[[], object], warmup: int = 3, iters: int = 20, device: str | torch.device = "cuda") -> dict:
    """Median/min/p90 milliseconds of fn(): CUDA events on a GPU, perf_counter (after a sync) elsewhere."""
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    samples = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {"median_ms": statistics.median(samples), "min_ms": samples[0],
            "p90_ms": samples[min(len(samples) - 1, int(0.9 * len(samples)))], "iters": iters}


def tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters and buffers (each storage counted once: tied weights are not double counted)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type == "meta":
            continue
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def gpu_memory() -> dict:
    if not torch.cuda.is_available():
        return {}
    return {"allocated_bytes": torch.cuda.memory_allocated(), "max_allocated_bytes": torch.cuda.max_memory_allocated(),
            "reserved_bytes": torch.cuda.memory_reserved()}


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        return None


def provenance() -> dict:
    """Who/what/where produced a result."""
    p = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
         "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
         "commit": os.environ.get("TITAN_COMMIT") or _git("rev-parse", "--short", "HEAD"),
         "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
         "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton
        p["triton"] = triton.__version__
    except ImportError:
        p["triton"] = None
    try:
        import transformers
        p["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        p.update(device=props.name, device_kind="cuda", sm_count=props.multi_processor_count,
                 cuda=torch.version.cuda, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    else:
        p.update(device=f"CPU {platform.machine()} ({os.cpu_count()} cores)", device_kind="cpu")
    return p


def positive_int(text: str) -> int:
    """argparse type for counts and lengths: an integer >= 1 (0 or a negative one ran a meaningless job, or crashed
    deep inside it with a torch traceback)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type for rates: a number > 0 ('inf' allowed)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0 (or inf), got {text!r}") from None
    if not value > 0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be a number > 0 (or inf), got {text}")
    return value


def results_dir(phase: str) -> Path:
    d = Path(os.environ.get("TITAN_RESULTS_DIR", REPO_ROOT / phase / "results"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_result(phase: str, name: str, payload: dict) -> Path:
    """Write <phase>/results/<name>.json with provenance; TITAN_RESULTS_DIR redirects it (e.g. to $OUT on the GPU)."""
    path = results_dir(phase) / f"{name}.json"
    path.write_text(json.dumps({"provenance": provenance(), **payload}, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return path


def load_result(phase: str, name: str) -> dict | None:
    path = REPO_ROOT / phase / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None
