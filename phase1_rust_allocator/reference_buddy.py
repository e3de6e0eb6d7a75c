"""Python reference of the buddy allocator (src/buddy.rs): contiguous power-of-two runs, split and merge.

NOTE (design): a run of order k at `s` (a multiple of 2^k) has its buddy at `s ^ 2^k`; two free buddies merge into
the run of order k+1 at `min(s, buddy)`. Each order keeps its free starts sorted, and allocation takes the lowest
address of the smallest order that fits, so this and the Rust version make the same choices. A request for n
blocks gets 2^ceil(log2 n) (internal fragmentation), and free memory cut into runs too small for a request is
external fragmentation: `external_fragmentation() = 1 - largest_free_run / free_blocks`.
"""
from __future__ import annotations

from bisect import bisect_left, insort
from operator import index

from phase1_rust_allocator.errors import DoubleFreeError, InvalidArgumentError, InvalidBlockError, OutOfBlocksError


def _index(n) -> int:
    """operator.index, bounded like the Rust binding's i64 arguments: an int outside int64 is the OverflowError PyO3
    raises (it was accepted here: allocate_n(2**70) an OutOfBlocksError, add_sequence(2**64) a new sequence)."""
    n = index(n)
    if not -2**63 <= n < 2**63:
        raise OverflowError(f"Python int too large to convert to C long (ids and counts are int64, got {n})")
    return n


def order_for(n: int) -> int:
    """Smallest k with 2^k >= n (n >= 1)."""
    return (n - 1).bit_length()


def _count(name: str, n) -> int:
    n = _index(n)
    if n < 0:
        raise InvalidArgumentError(f"{name} must be >= 0, got {n}")
    return n


class BuddyAllocator:
    """Contiguous runs of 2^k blocks out of `num_blocks` (any count: the range is covered by aligned power-of-two runs)."""

    def __init__(self, num_blocks: int):
        num_blocks = _count("num_blocks", num_blocks)
        if not 1 <= num_blocks <= 2**32 - 1:
            raise InvalidArgumentError(f"num_blocks must be in 1..=2^32-1, got {num_blocks}")
        self._n = num_blocks
        self._max_order = num_blocks.bit_length() - 1
        self._free: list[list[int]] = [[] for _ in range(self._max_order + 1)]  # sorted starts per order
        self._alloc: dict[int, int] = {}  # start -> order
        self._num_free = num_blocks
        start = 0
        while start < num_blocks:
            k = self._max_order
            while start % (1 << k) or start + (1 << k) > num_blocks:
                k -= 1
            self._free[k].append(start)
            start += 1 << k

    num_total_blocks = property(lambda self: self._n)
    num_free_blocks = property(lambda self: self._num_free)
    num_allocations = property(lambda self: len(self._alloc))

    def _fitting_order(self, order: int) -> int | None:
        return next((k for k in range(order, self._max_order + 1) if self._free[k]), None)

    def can_allocate(self, n: int) -> bool:
        n = _count("n", n)
        return 1 <= n <= (1 << self._max_order) and self._fitting_order(order_for(n)) is not None

    def allocate(self, n: int) -> int:
        """A run of 2^ceil(log2 n) blocks; returns its first block."""
        n = _count("n", n)
        if n == 0:
            raise InvalidArgumentError("allocate(n) needs n >= 1")
        order = order_for(n)
        k = self._fitting_order(order) if order <= self._max_order else None
        if k is None:
            raise OutOfBlocksError(f"out of KV-cache blocks: need {1 << min(order, 63)}, {self._num_free} free; "
                                   f"free a sequence (preempt) or give the cache more blocks")
        start = self._free[k].pop(0)
        while k > order:
            k -= 1
            insort(self._free[k], start + (1 << k))  # the upper half stays free
        self._alloc[start] = order
        self._num_free -= 1 << order
        return start

    def free(self, start: int) -> int:
        """Free the run starting at `start`, merging with free buddies; returns its size in blocks."""
        start = _index(start)
        if not 0 <= start < self._n:
            raise InvalidBlockError(f"invalid block {start}: block ids are 0..{self._n}")
        order = self._alloc.pop(start, None)
        if order is None:
            raise DoubleFreeError(f"double free of block {start}: its reference count is already 0")
        s, k = start, order
        while k < self._max_order:
            lst, buddy = self._free[k], s ^ (1 << k)
            i = bisect_left(lst, buddy)
            if i == len(lst) or lst[i] != buddy:
                break
            del lst[i]
            s &= ~(1 << k)
            k += 1
        insort(self._free[k], s)
        self._num_free += 1 << order
        return 1 << order

    def allocation_size(self, start: int) -> int:
        """Size in blocks of the allocation starting at `start` (0 if none starts there)."""
        order = self._alloc.get(_index(start))
        return 0 if order is None else 1 << order

    def largest_free_run(self) -> int:
        return next((1 << k for k in range(self._max_order, -1, -1) if self._free[k]), 0)

    def external_fragmentation(self) -> float:
        return 0.0 if self._num_free == 0 else 1.0 - self.largest_free_run() / self._num_free

    def free_runs(self) -> list[tuple[int, int]]:
        """Free runs as (start, size), sorted by start."""
        return sorted((s, 1 << k) for k, lst in enumerate(self._free) for s in lst)

    def __repr__(self) -> str:
        return (f"BuddyAllocator[python](num_blocks={self._n}, free={self._num_free}, "
                f"allocations={self.num_allocations}, largest_free_run={self.largest_free_run()})")
