"""Both implementations, for tests parametrized over them.

The Rust one must be built (`bash tools/build_rust.sh`, part of `make setup`); on a CPU machine a missing build is
an error. The GPU machine has no Rust toolchain and this phase has no GPU tests, so there, without the wheel,
these tests are not collected (run check_wheel_on_gpu.sh to test the carried wheel instead).
"""
import pytest
import torch

try:
    import kv_cache_manager  # noqa: F401
    HAVE_RUST = True
except ImportError:
    HAVE_RUST = False

if not HAVE_RUST and torch.cuda.is_available():
    collect_ignore_glob = ["test_*.py"]
else:
    from phase1_rust_allocator import reference, rust

    IMPLS = {"rust": rust, "python": reference}

    @pytest.fixture(params=sorted(IMPLS))
    def impl(request):
        """The module (rust or reference) holding BlockAllocator, BuddyAllocator and BlockTableManager."""
        return IMPLS[request.param]
