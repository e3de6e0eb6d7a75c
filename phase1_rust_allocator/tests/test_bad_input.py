"""Bad input gives the same typed error from the Rust crate and the Python reference (bad-input audit). The audit
drove 80 bad calls through both (negative / zero sizes, double and unknown frees, out of blocks, floats, None,
strings, unknown and duplicate sequences); all agreed but ints outside int64, which the reference accepted
(allocate_n(2**70): OutOfBlocksError, add_sequence(2**64): a new sequence) and the binding refuses (OverflowError),
and two huge counts that crashed the Rust crate before its checks ran: allocate_n(2**36) reserved 256 GB (the process
aborted) and slot_mapping([s], [2**62]) reserved the unchecked sum (a PanicException, which `except Exception`
does not catch). Both now raise the reference's error (src/block_allocator.rs, src/block_table.rs)."""
import pytest

from phase1_rust_allocator.errors import (DoubleFreeError, InvalidArgumentError, InvalidBlockError, OutOfBlocksError,
                                          UnknownSequenceError)


@pytest.mark.parametrize("call", [
    lambda m: m.BlockAllocator(4).allocate_n(2**70),
    lambda m: m.BlockAllocator(4).free(2**63),
    lambda m: m.BlockAllocator(4).can_allocate(-2**63 - 1),
    lambda m: m.BuddyAllocator(8).allocate(2**64),
    lambda m: m.BlockTableManager(4, 16).add_sequence(2**64),
    lambda m: m.BlockAllocator(2**64),
], ids=["allocate_n", "free", "can_allocate", "buddy-allocate", "add_sequence", "constructor"])
def test_ints_outside_int64(impl, call):
    with pytest.raises(OverflowError, match="Python int too large to convert to C long"):
        call(impl)


def test_int64_bounds_still_take_their_usual_errors(impl):
    t = impl.BlockTableManager(4, 16)
    t.add_sequence(2**63 - 1)  # the largest id both take
    assert t.has_sequence(2**63 - 1)
    with pytest.raises(OutOfBlocksError):
        impl.BlockAllocator(4).allocate_n(2**63 - 1)
    with pytest.raises(InvalidBlockError):
        impl.BlockAllocator(4).free(-2**63)
    with pytest.raises(UnknownSequenceError):
        t.free_sequence(-2**63)


@pytest.mark.parametrize("call, err", [
    (lambda m: m.BlockAllocator(4).allocate_n(-1), InvalidArgumentError),
    (lambda m: m.BlockAllocator(0), InvalidArgumentError),
    (lambda m: m.BlockAllocator(4).free(0), DoubleFreeError),
    (lambda m: m.BlockAllocator(4).free(9), InvalidBlockError),
    (lambda m: m.BlockAllocator(4).free(None), TypeError),
    (lambda m: m.BlockAllocator(4).allocate_n(2.0), TypeError),
    (lambda m: m.BuddyAllocator(8).allocate(0), InvalidArgumentError),
    (lambda m: m.BlockTableManager(4, 16).append_tokens(7, 1), UnknownSequenceError),
], ids=["negative-count", "zero-blocks", "double-free", "unknown-block", "None", "float", "buddy-zero", "unknown-seq"])
def test_same_typed_errors(impl, call, err):
    with pytest.raises(err):
        call(impl)


def test_huge_counts_are_errors_not_crashes(impl):
    with pytest.raises(OutOfBlocksError, match="need 68719476736, 4 free"):
        impl.BlockAllocator(4).allocate_n(2**36)
    t = impl.BlockTableManager(4, 16)
    t.add_sequence(1)
    t.append_tokens(1, 3)
    with pytest.raises(InvalidArgumentError, match="sequence 1 has 3 tokens, asked for the last 4611686018427387904"):
        t.slot_mapping([1], [2**62])
    assert t.slot_mapping([1], [2]) == t.slot_mapping([1], [3])[1:] and t.num_tokens(1) == 3  # state unchanged


def test_the_largest_pools_cost_only_what_is_used():
    """2^32 - 1 blocks (the id range's limit): the Rust crate's pool is lazy (a watermark instead of a pre-filled free
    stack, zeroed counts mapped as written), so it builds at once and hands out ids as a small one does; where the
    system refuses the 16 GiB of counts it is an InvalidArgumentError, never an abort. It used to write 32 GiB up
    front. (The Python reference stays the plain O(N) version: readable, not for pools this size.)"""
    import resource
    import time

    from phase1_rust_allocator import rust

    n = 2**32 - 1
    rss0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    try:
        a, buddy = rust.BlockAllocator(n, 16), rust.BuddyAllocator(n)
    except InvalidArgumentError as e:
        assert "could not be allocated" in str(e)
        return
    assert a.num_free_blocks == n and a.allocate_n(3) == [0, 1, 2]
    assert a.free(1) and a.allocate() == 1 and a.num_free_blocks == n - 3
    s = buddy.allocate(5)  # the smallest free run that fits: the 8-block run near the end (N = 2^31 + ... + 1)
    assert s == n - 15 and buddy.allocation_size(s) == 8 and buddy.free(s) == 8
    assert buddy.num_free_blocks == n
    assert time.perf_counter() - t0 < 5.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 512 * 1024  # KiB: < 0.5 GiB touched
