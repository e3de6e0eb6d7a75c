"""Unit tests of BlockAllocator and BuddyAllocator, run on the Rust crate and the Python reference alike."""
import pytest

from common import artifacts
from phase1_rust_allocator.errors import (AllocatorError, DoubleFreeError, InvalidArgumentError, InvalidBlockError,
                                          OutOfBlocksError)


def test_artifacts_point_at_both_implementations():
    assert artifacts.get("allocator.block").__module__ == "kv_cache_manager"
    assert artifacts.get("allocator.block_ref").__module__ == "phase1_rust_allocator.reference"
    assert artifacts.get("allocator.block_table").__name__ == artifacts.get("allocator.block_table_ref").__name__
    assert artifacts.get("allocator.out_of_blocks") is OutOfBlocksError


def test_allocate_free_lifo(impl):
    a = impl.BlockAllocator(5, block_size=8)
    assert (a.num_total_blocks, a.num_free_blocks, a.block_size) == (5, 5, 8)
    assert a.allocate() == 0
    assert a.allocate_n(3) == [1, 2, 3]
    assert a.free(2) is True
    assert a.allocate() == 2, "the block freed last is handed out first"
    assert a.num_free_blocks == 1 and a.can_allocate(1) and not a.can_allocate(2)
    assert "free=1" in repr(a)


def test_refcounts_and_sharing(impl):
    a = impl.BlockAllocator(4)
    b = a.allocate()
    assert a.incref(b) == 2 and a.refcount(b) == 2
    assert a.free(b) is False and a.refcount(b) == 1
    assert a.free(b) is True and a.refcount(b) == 0
    assert a.refcounts() == [0, 0, 0, 0]


def test_out_of_blocks_changes_nothing(impl):
    a = impl.BlockAllocator(3)
    a.allocate()
    with pytest.raises(OutOfBlocksError, match="need 3, 2 free"):
        a.allocate_n(3)
    assert a.num_free_blocks == 2
    a.allocate_n(2)
    with pytest.raises(OutOfBlocksError):
        a.allocate()


def test_double_free_and_invalid_blocks(impl):
    a = impl.BlockAllocator(3)
    b = a.allocate()
    a.free(b)
    with pytest.raises(DoubleFreeError, match="double free of block 0"):
        a.free(b)
    with pytest.raises(InvalidBlockError, match="block ids are 0..3"):
        a.free(3)
    with pytest.raises(InvalidBlockError):
        a.refcount(-1)
    with pytest.raises(InvalidBlockError, match="incref needs an allocated block"):
        a.incref(1)
    assert isinstance(DoubleFreeError("x"), (AllocatorError, ValueError))


def test_free_n_is_all_or_nothing(impl):
    a = impl.BlockAllocator(4)
    x, y = a.allocate_n(2)
    a.incref(x)
    with pytest.raises(DoubleFreeError):
        a.free_n([x, y, y])  # y is held once
    assert a.refcounts() == [2, 1, 0, 0]
    with pytest.raises(InvalidBlockError):
        a.free_n([x, 99])
    assert a.refcounts() == [2, 1, 0, 0]
    assert a.free_n([x, x, y]) == 2
    assert a.num_free_blocks == 4


@pytest.mark.parametrize("args", [(0,), (-1,), (4, 0), (4, -16)])
def test_bad_construction(impl, args):
    with pytest.raises(InvalidArgumentError):
        impl.BlockAllocator(*args)


def test_bad_counts_and_types(impl):
    a = impl.BlockAllocator(4)
    with pytest.raises(InvalidArgumentError, match="n must be >= 0"):
        a.allocate_n(-1)
    with pytest.raises(TypeError):
        a.free(1.5)


def test_buddy_split_merge(impl):
    b = impl.BuddyAllocator(16)
    s = b.allocate(3)
    assert (s, b.allocation_size(s), b.num_free_blocks) == (0, 4, 12)
    assert b.allocate(1) == 4
    assert b.free_runs() == [(5, 1), (6, 2), (8, 8)]
    assert b.free(s) == 4 and b.free(4) == 1
    assert b.free_runs() == [(0, 16)] and b.external_fragmentation() == 0.0


def test_buddy_external_fragmentation_and_errors(impl):
    b = impl.BuddyAllocator(13)
    assert b.free_runs() == [(0, 8), (8, 4), (12, 1)]
    assert b.external_fragmentation() == pytest.approx(1 - 8 / 13)
    with pytest.raises(OutOfBlocksError):
        b.allocate(16)
    with pytest.raises(InvalidArgumentError):
        b.allocate(0)
    starts = [b.allocate(1) for _ in range(8)]
    for s in starts[::2]:
        b.free(s)
    with pytest.raises(DoubleFreeError):
        b.free(starts[0])
    with pytest.raises(InvalidBlockError):
        b.free(13)
    assert b.largest_free_run() == 4 and not b.can_allocate(8)
    assert "allocations=4" in repr(b)
