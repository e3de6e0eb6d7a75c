"""Both implementations, for tests parametrized over them (the Rust one must be built: `bash tools/build_rust.sh`)."""
import pytest

from phase1_rust_allocator import reference, rust

IMPLS = {"rust": rust, "python": reference}


@pytest.fixture(params=sorted(IMPLS))
def impl(request):
    """The module (rust or reference) holding BlockAllocator, BuddyAllocator and BlockTableManager."""
    return IMPLS[request.param]
