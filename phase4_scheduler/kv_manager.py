# NOTE: not named kv_cache_manager.py: run from this folder (a notebook's cwd), that name would shadow phase 1's Rust
# extension module `kv_cache_manager`.
"""KVCacheManager: the scheduler's view of KV memory, over phase 1's block-table manager.

The scheduler asks `can_allocate(request, n)` before it schedules n more tokens of a request, then `allocate` grows
the request's block table (or does both at once with `try_allocate`); `free` hands every block back when a request
finishes, is aborted or is preempted. For the model runner it keeps every request's block ids in one persistent
int32 array `table_buf` [rows, max_blocks] (a row per request holding blocks, zero-padded), so a step's block
tables are one numpy gather `table_buf[rows, :width]` and its slot mapping one vectorised expression.

NOTE (the blocks are phase 1's, mirrored): the allocator is `artifacts.get("allocator.block_table")` (the Rust
crate; its Python reference with the same API where the wheel is not built) and it alone hands out block ids. This
class mirrors each request's token count and block ids on the Python side and calls the allocator only when a
request needs a NEW block: a decode step that fills a slot of an already-held block (15 steps in 16 at block size
16) costs no call across the language boundary, and the new ids are read back once per new block. The allocator is
told about the deferred tokens in that same call (`append_tokens(seq, tokens since the last call)`), so its block
decisions are exactly those of one call per step. This holds because phase 4 never forks sequences (no shared
copy-on-write blocks); a fork would need the mirror re-read.
"""
from __future__ import annotations

import numpy as np

from common import artifacts


def make_block_table_manager(num_blocks: int, block_size: int):
    """(manager, the artifact name it came from): the Rust crate, else (its wheel not built here) phase 1's Python
    reference; a learner's override of allocator.block_table that fails to load raises instead of falling back."""
    cls, name = artifacts.get_or_fallback("allocator.block_table", "allocator.block_table_ref")
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
        self._tokens: dict[str, int] = {}  # tokens allocated to each request (the engine's count)
        self._synced: dict[str, int] = {}  # of which the allocator has been told
        self._blocks: dict[str, list[int]] = {}  # block ids, mirrored from the allocator
        self.rows: dict[str, int] = {}  # request -> its row of table_buf
        self._free_rows: list[int] = []
        self.table_buf = np.zeros((16, 8), dtype=np.int32)  # [rows, max_blocks]: grows on demand

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
        held = len(self._blocks[request_id]) if request_id in self._blocks else 0
        return max(0, -(-(self._tokens.get(request_id, 0) + num_new_tokens) // self.block_size) - held)

    # -- check / act -------------------------------------------------------------------------------------------------
    def can_allocate(self, request_id: str, num_new_tokens: int) -> bool:
        need = self.num_blocks_needed(request_id, num_new_tokens)
        return need == 0 or need <= self.tables.num_free_blocks

    def try_allocate(self, request_id: str, num_new_tokens: int) -> bool:
        """can_allocate + allocate in one call (the scheduler's hot path); False changes nothing."""
        tokens = self._tokens.get(request_id)
        if tokens is not None and tokens + num_new_tokens <= len(self._blocks[request_id]) * self.block_size:
            self._tokens[request_id] = tokens + num_new_tokens  # fits the blocks it holds: no allocator call
            return True
        if not self.can_allocate(request_id, num_new_tokens):
            return False
        self.allocate(request_id, num_new_tokens)
        return True

    def allocate(self, request_id: str, num_new_tokens: int) -> None:
        """Grow the request's cache by num_new_tokens slots (raises phase 1's OutOfBlocksError, changing nothing)."""
        if request_id not in self._seq_ids:
            self.tables.add_sequence(self._next_seq_id)
            self._seq_ids[request_id] = self._next_seq_id
            self._next_seq_id += 1
            self._tokens[request_id] = self._synced[request_id] = 0
            self._blocks[request_id] = []
            self.rows[request_id] = self._free_rows.pop() if self._free_rows else len(self.rows)
        total = self._tokens[request_id] + num_new_tokens
        blocks = self._blocks[request_id]
        if total > len(blocks) * self.block_size:  # new blocks: tell the allocator every token since the last call
            seq = self._seq_ids[request_id]
            self.tables.append_tokens(seq, total - self._synced[request_id])
            self._synced[request_id] = total
            new = list(self.tables.block_table(seq))[len(blocks):]
            self._write_row(self.rows[request_id], len(blocks), new)
            blocks += new
        self._tokens[request_id] = total

    def _write_row(self, row: int, start: int, block_ids: list[int]) -> None:
        rows, width = self.table_buf.shape
        if row >= rows or start + len(block_ids) > width:
            grown = np.zeros((max(rows, 2 * row + 2), max(width, 2 * (start + len(block_ids)))), dtype=np.int32)
            grown[:rows, :width] = self.table_buf
            self.table_buf = grown
        self.table_buf[row, start:start + len(block_ids)] = block_ids

    def free(self, request_id: str) -> int:
        """Give back every block of the request; returns how many went back to the pool (0 if it held none)."""
        seq = self._seq_ids.pop(request_id, None)
        if seq is None:
            return 0
        row = self.rows.pop(request_id)
        self.table_buf[row, :len(self._blocks.pop(request_id))] = 0  # rows stay zero-padded for their next owner
        self._free_rows.append(row)
        del self._tokens[request_id], self._synced[request_id]
        return self.tables.free_sequence(seq)

    # -- what the model runner needs ---------------------------------------------------------------------------------
    def block_table(self, request_id: str) -> list[int]:
        return list(self._blocks[request_id])

    def num_tokens(self, request_id: str) -> int:
        return self._tokens[request_id]

    def block_tables(self, rows: np.ndarray, width: int) -> np.ndarray:
        """[B, width] int32: the block tables of the requests in `rows` (their rows of table_buf), zero-padded."""
        return self.table_buf[rows, :width]

    def slots(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Flat cache slots of tokens at `positions` [T] of the requests in `rows` [T] (int64)."""
        bs = self.block_size
        return self.table_buf[rows, positions // bs].astype(np.int64) * bs + positions % bs

    def slot_mapping(self, request_ids: list[str], num_new_tokens: list[int]) -> list[int]:
        """Flat cache slots of the newest num_new_tokens[i] tokens of each request, concatenated."""
        rows = np.repeat([self.rows[r] for r in request_ids], num_new_tokens)
        pos = np.concatenate([np.arange(self._tokens[r] - n, self._tokens[r]) for r, n in
                              zip(request_ids, num_new_tokens)] or [np.zeros(0, np.int64)])
        return self.slots(rows, pos).tolist()

    def check_mirror(self) -> None:
        """Assert the Python mirror agrees with the allocator (tests call this; it costs a call per request)."""
        for rid, seq in self._seq_ids.items():
            blocks = list(self.tables.block_table(seq))
            assert blocks == self._blocks[rid], f"{rid}: mirror {self._blocks[rid]} != allocator {blocks}"
            assert self.tables.num_tokens(seq) == self._synced[rid] <= self._tokens[rid] <= len(blocks) * self.block_size
            assert list(self.table_buf[self.rows[rid], :len(blocks)]) == blocks
            assert not self.table_buf[self.rows[rid], len(blocks):].any()

    def __repr__(self) -> str:
        return (f"KVCacheManager({self.num_total_blocks} blocks x {self.block_size} tokens, "
                f"free={self.num_free_blocks}, requests={len(self._seq_ids)}, usage={self.usage:.0%}, {self.source})")
