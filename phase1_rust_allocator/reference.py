"""The Python reference of the block manager: the same API, the same choices, the same errors as the Rust crate.

Read this first; src/block_allocator.rs and src/block_table.rs are the same algorithms in Rust. Property tests
(tests/test_properties.py) drive random operation sequences through both and require identical observable state.

NOTE (design): the free list is a LIFO stack (allocate = pop, free = push), refcounts are a flat list indexed by
block id (0 = free); every mutating call computes what it needs and raises before changing anything, so an error
never leaves a half-updated state. Block tables share blocks by refcount and copy a *partly filled* shared last
block on the first write into it (copy-on-write), returning the (src, dst) pair the engine must copy.
"""
from __future__ import annotations

from phase1_rust_allocator.errors import (DoubleFreeError, DuplicateSequenceError, InvalidArgumentError,
                                          InvalidBlockError, OutOfBlocksError, UnknownSequenceError)
from phase1_rust_allocator.reference_buddy import BuddyAllocator, _index


def _count(name: str, n) -> int:
    n = _index(n)
    if n < 0:
        raise InvalidArgumentError(f"{name} must be >= 0, got {n}")
    return n


def _oob(requested: int, free: int) -> OutOfBlocksError:
    return OutOfBlocksError(f"out of KV-cache blocks: need {requested}, {free} free; free a sequence (preempt) "
                            f"or give the cache more blocks")


class BlockAllocator:
    """`num_blocks` fixed-size blocks of `block_size` token slots; O(1) allocate/free; reference counts."""

    def __init__(self, num_blocks: int, block_size: int = 16):
        num_blocks, block_size = _count("num_blocks", num_blocks), _count("block_size", block_size)
        if not 1 <= num_blocks <= 2**32 - 1:
            raise InvalidArgumentError(f"num_blocks must be in 1..=2^32-1, got {num_blocks}")
        if block_size == 0:
            raise InvalidArgumentError("block_size must be >= 1, got 0")
        self.block_size = block_size
        self._refcounts = [0] * num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # reversed: first allocations hand out 0, 1, 2, ...

    num_total_blocks = property(lambda self: len(self._refcounts))
    num_free_blocks = property(lambda self: len(self._free))
    num_used_blocks = property(lambda self: len(self._refcounts) - len(self._free))

    def can_allocate(self, n: int) -> bool:
        return _count("n", n) <= len(self._free)

    def _check(self, block) -> int:
        block = _index(block)
        if not 0 <= block < len(self._refcounts):
            raise InvalidBlockError(f"invalid block {block}: block ids are 0..{len(self._refcounts)}")
        return block

    def allocate(self) -> int:
        """One block with reference count 1."""
        if not self._free:
            raise _oob(1, 0)
        b = self._free.pop()
        self._refcounts[b] = 1
        return b

    def allocate_n(self, n: int) -> list[int]:
        """`n` blocks, all or nothing."""
        n = _count("n", n)
        if n > len(self._free):
            raise _oob(n, len(self._free))
        out = self._free[len(self._free) - n:][::-1]  # the same order as n pops
        del self._free[len(self._free) - n:]
        for b in out:
            self._refcounts[b] = 1
        return out

    def free(self, block: int) -> bool:
        """Drop one reference; True when the block went back to the free list."""
        b = self._check(block)
        rc = self._refcounts[b]
        if rc == 0:
            raise DoubleFreeError(f"double free of block {b}: its reference count is already 0")
        self._refcounts[b] = rc - 1
        if rc == 1:
            self._free.append(b)
            return True
        return False

    def free_n(self, ids: list[int]) -> int:
        """Drop one reference per listed id (ids may repeat); all or nothing. Returns how many blocks became free."""
        rc, to_free, done = self._refcounts, [], []
        try:
            for block in ids:
                b = self._check(block)
                if rc[b] == 0:
                    raise DoubleFreeError(f"double free of block {b}: its reference count is already 0")
                rc[b] -= 1
                done.append(b)
                if rc[b] == 0:
                    to_free.append(b)
        except Exception:
            for b in done:  # roll back: nothing changes on error
                rc[b] += 1
            raise
        self._free.extend(to_free)
        return len(to_free)

    def incref(self, block: int) -> int:
        """Add a reference to an allocated block (share it); returns the new count."""
        b = self._check(block)
        if self._refcounts[b] == 0:
            raise InvalidBlockError(f"invalid block {b}: it is free; incref needs an allocated block")
        self._refcounts[b] += 1
        return self._refcounts[b]

    def refcount(self, block: int) -> int:
        return self._refcounts[self._check(block)]

    def refcounts(self) -> list[int]:
        return list(self._refcounts)

    def __repr__(self) -> str:
        shared = sum(c > 1 for c in self._refcounts)
        return (f"BlockAllocator[python](num_blocks={self.num_total_blocks}, block_size={self.block_size}, "
                f"free={self.num_free_blocks}, shared={shared})")


class BlockTableManager:
    """Per-sequence block tables over a BlockAllocator: append, slot mapping, fork (copy-on-write), free."""

    def __init__(self, num_blocks: int, block_size: int = 16):
        self._alloc = BlockAllocator(num_blocks, block_size)
        self._tables: dict[int, list[int]] = {}
        self._ntok: dict[int, int] = {}

    block_size = property(lambda self: self._alloc.block_size)
    num_total_blocks = property(lambda self: self._alloc.num_total_blocks)
    num_free_blocks = property(lambda self: self._alloc.num_free_blocks)
    num_sequences = property(lambda self: len(self._tables))

    def has_sequence(self, seq_id: int) -> bool:
        return _index(seq_id) in self._tables

    def seq_ids(self) -> list[int]:
        return sorted(self._tables)

    def _table(self, seq_id) -> list[int]:
        seq_id = _index(seq_id)
        t = self._tables.get(seq_id)
        if t is None:
            raise UnknownSequenceError(f"unknown sequence {seq_id}: call add_sequence({seq_id}) first (or it was freed)")
        return t

    def add_sequence(self, seq_id: int) -> None:
        seq_id = _index(seq_id)
        if seq_id in self._tables:
            raise DuplicateSequenceError(f"sequence {seq_id} already exists: free_sequence({seq_id}) first or pick a new id")
        self._tables[seq_id], self._ntok[seq_id] = [], 0

    def _needed(self, seq_id: int, table: list[int], n: int) -> int:
        if n == 0:
            return 0
        bs, ntok = self._alloc.block_size, self._ntok[seq_id]
        cow = ntok % bs != 0 and self._alloc._refcounts[table[-1]] > 1
        return -(-(ntok + n) // bs) - len(table) + cow

    def num_blocks_needed(self, seq_id: int, n: int) -> int:
        n = _count("n", n)
        return self._needed(_index(seq_id), self._table(seq_id), n)

    def can_append(self, seq_id: int, n: int) -> bool:
        return self._alloc.can_allocate(self.num_blocks_needed(seq_id, n))

    def _append(self, seq_id: int, table: list[int], n: int, copies: list) -> None:
        if n == 0:
            return
        bs, ntok = self._alloc.block_size, self._ntok[seq_id]
        if ntok % bs and self._alloc._refcounts[table[-1]] > 1:  # copy-on-write of the shared, partly full block
            src, dst = table[-1], self._alloc.allocate()
            self._alloc.free(src)
            table[-1] = dst
            copies.append((src, dst))
        grow = -(-(ntok + n) // bs) - len(table)
        if grow:
            table.extend(self._alloc.allocate_n(grow))
        self._ntok[seq_id] = ntok + n

    def append_tokens(self, seq_id: int, n: int) -> list[tuple[int, int]]:
        """Append `n` tokens; returns the (src, dst) block copies to perform first. All or nothing."""
        need = self.num_blocks_needed(seq_id, n)
        if need > self._alloc.num_free_blocks:
            raise _oob(need, self._alloc.num_free_blocks)
        copies: list[tuple[int, int]] = []
        self._append(_index(seq_id), self._tables[_index(seq_id)], _index(n), copies)
        return copies

    def append_tokens_batch(self, seq_ids: list[int], num_new_tokens: list[int]):
        """One scheduler step for distinct sequences, all or nothing: returns (slot_mapping, copies)."""
        ns = [_count("num_new_tokens", n) for n in num_new_tokens]
        ids = [_index(s) for s in seq_ids]
        _check_lengths(ids, ns)
        tables = [self._table(s) for s in ids]
        need = sum(self._needed(s, t, n) for s, t, n in zip(ids, tables, ns))
        if len(ids) > 1 and len(set(ids)) != len(ids):
            seen: set[int] = set()
            dup = next(s for s in ids if s in seen or seen.add(s))
            raise InvalidArgumentError(f"sequence {dup} appears twice in one batch")
        if need > self._alloc.num_free_blocks:
            raise _oob(need, self._alloc.num_free_blocks)
        copies: list[tuple[int, int]] = []
        for s, t, n in zip(ids, tables, ns):
            self._append(s, t, n, copies)
        return self.slot_mapping(ids, ns), copies

    def slot_mapping(self, seq_ids: list[int], num_new_tokens: list[int] | None = None) -> list[int]:
        """Flat slots (block * block_size + offset) of the last num_new_tokens[i] tokens of each sequence."""
        ns = [1] * len(seq_ids) if num_new_tokens is None else [_count("num_new_tokens", n) for n in num_new_tokens]
        _check_lengths(seq_ids, ns)
        bs, out = self._alloc.block_size, []
        for s, n in zip(seq_ids, ns):
            t, ntok = self._table(s), self._ntok[_index(s)]
            if n > ntok:
                raise InvalidArgumentError(f"slot_mapping: sequence {s} has {ntok} tokens, asked for the last {n}")
            out.extend(t[p // bs] * bs + p % bs for p in range(ntok - n, ntok))
        return out

    def block_table(self, seq_id: int) -> list[int]:
        return list(self._table(seq_id))

    def block_tables(self, seq_ids: list[int]) -> list[list[int]]:
        return [self.block_table(s) for s in seq_ids]

    def num_tokens(self, seq_id: int) -> int:
        self._table(seq_id)
        return self._ntok[_index(seq_id)]

    def fork(self, parent: int, child: int) -> None:
        """`child` shares every block of `parent` (refcount +1 each) and its token count."""
        t, child = self._table(parent), _index(child)
        if child in self._tables:
            raise DuplicateSequenceError(f"sequence {child} already exists: free_sequence({child}) first or pick a new id")
        for b in t:
            self._alloc.incref(b)
        self._tables[child], self._ntok[child] = list(t), self._ntok[_index(parent)]

    def free_sequence(self, seq_id: int) -> int:
        """Drop the sequence and one reference per block (last block first); returns how many blocks became free."""
        t = self._table(seq_id)
        del self._tables[_index(seq_id)], self._ntok[_index(seq_id)]
        return self._alloc.free_n(t[::-1])

    def refcount(self, block: int) -> int:
        return self._alloc.refcount(block)

    def refcounts(self) -> list[int]:
        return self._alloc.refcounts()

    def __repr__(self) -> str:
        return (f"BlockTableManager[python](sequences={self.num_sequences}, num_blocks={self.num_total_blocks}, "
                f"block_size={self.block_size}, free={self.num_free_blocks})")


def _check_lengths(seq_ids, ns) -> None:
    if len(seq_ids) != len(ns):
        raise InvalidArgumentError(f"seq_ids and num_new_tokens differ in length ({len(seq_ids)} vs {len(ns)})")


__all__ = ["BlockAllocator", "BuddyAllocator", "BlockTableManager"]
