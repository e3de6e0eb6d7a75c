"""CUDA graphs for decode steps: capture once per batch size, replay every step.

An eager decode step of TinyLlama launches ~1,000 kernels from Python and is launch-bound (phase 0: 22 ms per
step while the GPU works 2.8 ms). A captured graph replays the same kernels with one launch.

    sizes    1 2 4 8 16 24 ... 256 320 384 ... max_num_seqs   (small powers of two, multiples of 8, then of 64)
    a step with B decode tokens replays the graph of the smallest size >= B; rows B.. are padding

NOTE (static buffers and the scratch page): a graph reads its inputs from fixed addresses, so every step writes its
token ids, positions, slot mapping, seq_lens and block tables into ONE pinned host buffer laid out exactly like the
device buffer the graphs read (int64 ids | pos | slots | rows, then int32 seq_lens | tables: the dtypes the kernels
take), and ONE host->device copy moves it: nothing else runs between two replays (an overlapped step adds one
index_select, its ids gathered on the device from the previous step's tokens). Padding rows must be harmless: they
write their K/V into a scratch block that no request owns (index num_blocks of the pool, one block past what the
allocator hands out) and attend over one token of it; they are written on the host, and only the rows a larger
step left behind are re-padded. The block-table buffer is as wide as max_model_len needs, so the decode kernel's
split count (a function of the table width) is the same at capture and at every replay.
"""
from __future__ import annotations

import time

import torch

from common.cuda_graph import warm_up_and_capture
from phase4_scheduler.model_runner import BatchAttention, as_cpu_tensor, pad_tables


def capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, then multiples of 8 up to 256, then of 64, and max_num_seqs itself: a padded step wastes < 25%
    (< 12.5% past 16) of its rows, and capturing 1,024 sizes' worth of graphs stays a ~40-size job."""
    sizes = [s for s in (1, 2, 4) if s < max_num_seqs] + list(range(8, min(max_num_seqs, 256) + 1, 8))
    sizes += list(range(320, max_num_seqs + 1, 64))
    if not sizes or sizes[-1] != max_num_seqs:
        sizes.append(max_num_seqs)
    return sorted(set(sizes))


class DecodeGraphs:
    def __init__(self, runner, max_num_seqs: int, max_model_len: int, capture: bool = True):
        """`capture=False` keeps the static buffers and padding but calls the forward instead of replaying a graph
        (the CPU tests check the plumbing that way)."""
        if capture and runner.device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA device; the runner is on {runner.device}")
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        self.runner = runner
        self.sizes = capture_sizes(max_num_seqs)
        self.max_batch = self.sizes[-1]
        self.width = -(-max_model_len // runner.block_size)  # block-table columns
        n, w, dev = self.max_batch, self.width, runner.device
        self.host = torch.zeros(self._nbytes(n), dtype=torch.uint8, pin_memory=capture)  # pinned staging
        self.dev = torch.zeros_like(self.host, device=dev)
        h, d = self._views(self.host), self._views(self.dev)
        self.h_ids, self.h_pos, self.h_slots, self.h_rows, self.h_lens, self.h_tables = h
        self.ids, self.pos, self.slots, self.rows, self.lens32, self.tables32 = d
        self.filled = n  # rows [0, filled) of the staging buffer may hold something other than padding
        self._pad_host(0)
        self.dev.copy_(self.host)
        self.copied = torch.cuda.Event() if capture else None  # the staging buffer is free once its copy has run
        self.graphs: dict[int, object] = {}
        # every size's graph converts its logits into rows [0, size) of this one buffer instead of owning a
        # [size, V] fp32 tensor (47 sizes up to 1,024 seats held ~12k rows: 1.6 GB at TinyLlama's vocabulary); the
        # engine samples a step's logits before it launches the next step, so one buffer serves them all
        self.logits = torch.empty(n, runner.config.vocab_size, dtype=torch.float32, device=dev)
        self.steps = self.tokens = self.padded_tokens = 0  # replays, their rows, their graphs' sizes (step_shapes)
        t0 = time.perf_counter()
        pool = None
        for b in reversed(self.sizes):  # largest first: the smaller graphs reuse its memory pool
            ctx = BatchAttention(runner, self.tables32[:b], self.lens32[:b], self.slots[:b])

            def step(b=b, ctx=ctx):
                return runner.forward(self.ids[:b], self.pos[:b], ctx, None, out=self.logits[:b])

            if not capture:
                self.graphs[b] = step
                continue
            with torch.inference_mode():
                g, _ = warm_up_and_capture(step, warmup=1, pool=pool)  # its output is a view of self.logits
            pool = g.pool() if pool is None else pool
            self.graphs[b] = g
        if capture:
            torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - t0

    def fits(self, batch: int) -> bool:
        return batch <= self.max_batch

    def _nbytes(self, table_rows: int) -> int:
        """Bytes of the staging layout (`_views`) through `table_rows` block-table rows."""
        return 36 * self.max_batch + 4 * self.width * table_rows

    def _views(self, buf: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """ids, pos, slots, rows [n] int64, seq_lens [n] int32, tables [n, W] int32: typed views of one byte buffer."""
        n, w = self.max_batch, self.width
        i64 = buf[:32 * n].view(torch.int64)
        lens = buf[32 * n:36 * n].view(torch.int32)
        tables = buf[36 * n:].view(torch.int32).view(n, w)
        return i64[:n], i64[n:2 * n], i64[2 * n:3 * n], i64[3 * n:], lens, tables

    def _pad_host(self, b: int) -> None:
        """Staging rows b.. become harmless padding (scratch slot, one cached token); only rows a larger step left.
        Rows [0, b) are the caller's to fill."""
        if self.filled <= b:
            self.filled = b
            return
        r, rows = self.runner, slice(b, self.filled)
        self.h_ids[rows] = 0
        self.h_pos[rows] = 0
        self.h_rows[rows] = 0
        self.h_slots[rows] = r.null_block * r.block_size
        self.h_lens[rows] = 1
        self.h_tables[rows] = r.null_block
        self.filled = b

    def run(self, token_ids, positions, seq_lens, block_tables, slot_mapping, token_src=None) -> torch.Tensor:
        """Stage one decode step's inputs on the host, copy them to the static buffers (one copy), replay the graph
        for the next size >= B. `token_src` = (tokens on the device, rows [B] on the CPU): the ids are tokens[rows],
        gathered on the device after the copy."""
        rows = None if token_src is None else as_cpu_tensor(token_src[1], torch.long)
        ids = as_cpu_tensor(token_ids, torch.long) if rows is None else rows
        b = ids.shape[0]
        size = next(s for s in self.sizes if s >= b)
        self.steps, self.tokens, self.padded_tokens = self.steps + 1, self.tokens + b, self.padded_tokens + size
        tables = pad_tables(block_tables)
        if tables.shape[1] > self.width:
            raise ValueError(f"a block table has {tables.shape[1]} blocks; the graphs hold {self.width} "
                             f"(max_model_len)")
        if self.copied is not None:
            self.copied.synchronize()  # the previous step's copy has read the staging buffer
        self._pad_host(b)
        if rows is None:
            self.h_ids[:b] = ids
        else:
            self.h_rows[:b] = rows
        self.h_pos[:b] = as_cpu_tensor(positions, torch.long)
        self.h_slots[:b] = as_cpu_tensor(slot_mapping, torch.long)
        self.h_lens[:b] = as_cpu_tensor(seq_lens, torch.int32)
        self.h_tables[:b].fill_(self.runner.null_block)
        self.h_tables[:b, :tables.shape[1]] = tables
        nbytes = self._nbytes(size)  # the tables of this graph's size: its padding rows included
        self.dev[:nbytes].copy_(self.host[:nbytes], non_blocking=True)
        if self.copied is not None:
            self.copied.record()
        if rows is not None:  # rows -> the previous step's tokens, on the device (queued after that step)
            torch.index_select(token_src[0], 0, self.rows[:b], out=self.ids[:b])
        if self.copied is None:  # capture=False: run the same forward on the same buffers
            self.graphs[size]()
        else:
            self.graphs[size].replay()
        return self.logits[:b]

    def __repr__(self) -> str:
        return (f"DecodeGraphs({len(self.sizes)} sizes 1..{self.max_batch}, table width {self.width}, "
                f"captured in {getattr(self, 'capture_seconds', 0):.1f} s)")
