"""The Rust implementation (crate kv_cache_manager, built by tools/build_rust.sh), under the names the seam uses.

    from common import artifacts
    BlockTableManager = artifacts.get("allocator.block_table")   # this module's BlockTableManager
"""
from __future__ import annotations

try:
    import kv_cache_manager as _kvcm
except ImportError as e:  # pragma: no cover - depends on the build
    raise ImportError(
        "the Rust extension kv_cache_manager is not installed. Build it with `bash tools/build_rust.sh` (part of "
        "`make setup`); on the GPU machine carry phase1_rust_allocator/target/wheels and pip install the abi3 wheel "
        "(see phase1_rust_allocator/check_wheel_on_gpu.sh). The Python reference needs no build: "
        "TITAN_ARTIFACTS=allocator.block_table=phase1_rust_allocator.reference:BlockTableManager") from e

BlockAllocator = _kvcm.BlockAllocator
BuddyAllocator = _kvcm.BuddyAllocator
BlockTableManager = _kvcm.BlockTableManager
__version__ = _kvcm.__version__

__all__ = ["BlockAllocator", "BuddyAllocator", "BlockTableManager"]
