"""Import check of the abi3 wheel on another machine (the GPU machine's Python 3.12): run by check_wheel_on_gpu.sh.

Imports kv_cache_manager, checks it is the stable-ABI build, drives a short synthetic continuous-batching trace
through it and through the Python reference (the outputs must be identical), times both, and writes
results/wheel_check_gpu.json (TITAN_RESULTS_DIR=$OUT sends it back from the device); on a machine without CUDA,
wheel_check_cpu.json, so a local run never overwrites the GPU machine's record.
"""
from __future__ import annotations

import platform
import sys
import time

from common.bench import write_result


def main() -> int:
    import kv_cache_manager

    from phase1_rust_allocator import reference, rust
    from phase1_rust_allocator.bench_allocator import replay
    from phase1_rust_allocator.errors import OutOfBlocksError
    from phase1_rust_allocator.trace import simulate_paged

    so = next(iter(getattr(kv_cache_manager, "__path__", [])), None)
    ext = kv_cache_manager.kv_cache_manager.__file__ if hasattr(kv_cache_manager, "kv_cache_manager") else so
    abi3 = ".abi3." in str(ext)
    lengths = [(37 + 13 * i % 300, 20 + 7 * i % 200) for i in range(300)]  # synthetic: no ShareGPT on the device
    trace = simulate_paged(rust.BlockTableManager(512, 16), lengths, rate=1.0, max_batch=64)
    _, out_r = replay(rust, trace.ops, 512, 16, collect=True)
    _, out_p = replay(reference, trace.ops, 512, 16, collect=True)
    t = {}
    for name, impl in (("rust", rust), ("python", reference)):
        t[name] = min(replay(impl, trace.ops, 512, 16)[0] for _ in range(3))
    try:
        rust.BlockAllocator(1).allocate_n(2)
        typed = False
    except OutOfBlocksError:
        typed = True
    ok = abi3 and out_r == out_p and typed
    print(f"kv_cache_manager {kv_cache_manager.__version__} on Python {platform.python_version()}: {ext}")
    print(f"abi3: {abi3}; identical to the reference: {out_r == out_p}; typed errors: {typed}; "
          f"trace replay {len(trace.ops)} calls: rust {t['rust'] * 1e3:.1f} ms, python {t['python'] * 1e3:.1f} ms "
          f"({t['python'] / t['rust']:.1f}x)")
    import torch

    name = "wheel_check_gpu" if torch.cuda.is_available() else "wheel_check_cpu"
    write_result("phase1_rust_allocator", name, {
        "ok": ok, "python": platform.python_version(), "extension": str(ext), "abi3": abi3,
        "identical_to_reference": out_r == out_p, "typed_errors": typed, "trace_calls": len(trace.ops),
        "replay_ms": {k: v * 1e3 for k, v in t.items()}, "speedup": t["python"] / t["rust"]})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
