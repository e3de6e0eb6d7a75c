# NOTE: not named kv_cache_manager.py: run from this folder (a notebook's cwd), that name would shadow phase 1's Rust
# extension module `kv_cache_manager`.
"""KVCacheManager: the scheduler's view of KV memory, over phase 1's block-table manager.

The scheduler asks `can_allocate(request, n)` before it schedules n more tokens of a request, then `allocate` grows
the request's block table; `free` hands every block back when a request finishes, is aborted or is preempted.

NOTE: the blocks are phase 1's (`artifacts.get("allocator.block_table")`, the Rust crate; its Python reference with
the same API where the wheel is not built). Request ids are strings, the allocator's sequence ids are ints: this
class keeps the mapping, so nothing above it sees allocator ids.
"""
from __future__ import annotations

from common import artifacts


def make_block_table_manager(num_blocks: int, block_size: int):
    """(manager, the artifact name it came from): the Rust crate, else phase 1's Python reference."""
    try:
        name, cls = "allocator.block_table", artifacts.get("allocator.block_table")
    except ImportError:
        name, cls = "allocator.block_table_ref", artifacts.get("allocator.block_table_ref")
    return cls(num_blocks, block_size), name


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int = 16):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one token, got num_blocks={num_blocks}, "
                             f"block_size={block_size}")
        self.tables, self.source = make_block_table_manager(num_blocks, block_size)
        self.block_size = block_size
        self._seq_ids: dict[str, int] = {}
        self._next_seq_id = 0

    # -- inspection ------------------------------------------------------------------------------------------------
    @property
    def num_total_blocks(self) -> int:
        return self.tables.num_total_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.tables.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks in use (0..1)."""
        return 1.0 - self.num_free_blocks / self.num_total_blocks

    @property
    def num_tokens_capacity(self) -> int:
        return self.num_total_blocks * self.block_size

    def has(self, request_id: str) -> bool:
        return request_id in self._seq_ids

    def num_blocks_needed(self, request_id: str, num_new_tokens: int) -> int:
        if request_id in self._seq_ids:
            return self.tables.num_blocks_needed(self._seq_ids[request_id], num_new_tokens)
        return -(-num_new_tokens // self.block_size)

    # -- check / act -------------------------------------------------------------------------------------------------
    def can_allocate(self, request_id: str, num_new_tokens: int) -> bool:
        return self.num_blocks_needed(request_id, num_new_tokens) <= self.num_free_blocks

    def allocate(self, request_id: str, num_new_tokens: int) -> None:
        """Grow the request's cache by num_new_tokens slots (raises phase 1's OutOfBlocksError, changing nothing)."""
        if request_id not in self._seq_ids:
            self.tables.add_sequence(self._next_seq_id)
            self._seq_ids[request_id] = self._next_seq_id
            self._next_seq_id += 1
        self.tables.append_tokens(self._seq_ids[request_id], num_new_tokens)

    def free(self, request_id: str) -> int:
        """Give back every block of the request; returns how many went back to the pool (0 if it held none)."""
        seq = self._seq_ids.pop(request_id, None)
        return 0 if seq is None else self.tables.free_sequence(seq)

    # -- what the model runner needs ---------------------------------------------------------------------------------
    def block_table(self, request_id: str) -> list[int]:
        return list(self.tables.block_table(self._seq_ids[request_id]))

    def num_tokens(self, request_id: str) -> int:
        return self.tables.num_tokens(self._seq_ids[request_id])

    def slot_mapping(self, request_ids: list[str], num_new_tokens: list[int]) -> list[int]:
        """Flat cache slots of the newest num_new_tokens[i] tokens of each request, concatenated."""
        return list(self.tables.slot_mapping([self._seq_ids[r] for r in request_ids], num_new_tokens))

    def __repr__(self) -> str:
        return (f"KVCacheManager({self.num_total_blocks} blocks x {self.block_size} tokens, "
                f"free={self.num_free_blocks}, requests={len(self._seq_ids)}, usage={self.usage:.0%}, {self.source})")
