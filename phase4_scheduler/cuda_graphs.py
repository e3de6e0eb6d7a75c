"""CUDA graphs for decode steps: capture once per batch size, replay every step.

An eager decode step of TinyLlama launches ~1,000 kernels from Python and is launch-bound (phase 0: 22 ms per
step while the GPU works 2.8 ms). A captured graph replays the same kernels with one launch.

    sizes    1 2 4 8 16 24 ... 256 320 384 ... max_num_seqs   (small powers of two, multiples of 8, then of 64)
    a step with B decode tokens replays the graph of the smallest size >= B; rows B.. are padding

NOTE (static buffers and the scratch page): a graph reads its inputs from fixed addresses, so every step copies
its token ids, positions, seq_lens, slot mapping and block tables INTO preallocated device buffers (one host->device
copy of one pinned buffer) and replays. Padding rows must be harmless: they write their K/V into a scratch block
that no request owns (index num_blocks of the pool, one block past what the allocator hands out) and attend over
one token of it. The block-table buffer is as wide as max_model_len needs, so the decode kernel's split count (a
function of the table width) is the same at capture and at every replay.
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
        # one pinned host staging buffer, one device buffer: ids | pos | slots | seq_lens | tables, all int64
        self.host = torch.zeros(4 * n + n * w, dtype=torch.long, pin_memory=capture)
        self.dev = torch.zeros_like(self.host, device=dev)
        self.ids, self.pos, self.slots = self.dev[:n], self.dev[n:2 * n], self.dev[2 * n:3 * n]
        self.lens32 = torch.ones(n, dtype=torch.int32, device=dev)  # [Bmax] the kernels want int32
        self.tables32 = torch.full((n, w), runner.null_block, dtype=torch.int32, device=dev)  # [Bmax, W]
        self.copied = torch.cuda.Event() if capture else None  # the staging buffer is free once its copy has run
        self.graphs: dict[int, object] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        t0 = time.perf_counter()
        pool = None
        for b in reversed(self.sizes):  # largest first: the smaller graphs reuse its memory pool
            self._pad(0)
            ctx = BatchAttention(runner, self.tables32[:b], self.lens32[:b], self.slots[:b])

            def step(b=b, ctx=ctx):
                return runner.forward(self.ids[:b], self.pos[:b], ctx, None)

            if not capture:
                self.graphs[b] = step
                continue
            with torch.inference_mode():
                g, out = warm_up_and_capture(step, warmup=1, pool=pool)
            pool = g.pool() if pool is None else pool
            self.graphs[b], self.outputs[b] = g, out
        if capture:
            torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - t0

    def fits(self, batch: int) -> bool:
        return batch <= self.max_batch

    def _pad(self, b: int) -> None:
        """Rows b.. of the device buffers become harmless padding: scratch slot, one cached token."""
        r = self.runner
        self.ids[b:].zero_()
        self.pos[b:].zero_()
        self.slots[b:].fill_(r.null_block * r.block_size)
        self.lens32[b:].fill_(1)
        self.tables32[b:].fill_(r.null_block)

    def run(self, token_ids, positions, seq_lens, block_tables, slot_mapping, token_src=None) -> torch.Tensor:
        """Copy one decode step's inputs into the static buffers, replay the graph for the next size >= B.
        `token_src` = (tokens on the device, rows [B] on the CPU): the ids are tokens[rows], gathered on the device
        after the copy (the staging buffer carries the row indices in the ids' place)."""
        ids = as_cpu_tensor(token_ids, torch.long) if token_src is None else token_src[1]
        b = ids.shape[0]
        size = next(s for s in self.sizes if s >= b)
        n, w = self.max_batch, self.width
        tables = pad_tables(block_tables)
        if tables.shape[1] > w:
            raise ValueError(f"a block table has {tables.shape[1]} blocks; the graphs hold {w} (max_model_len)")
        h = self.host
        if self.copied is not None:
            self.copied.synchronize()
        h[:b] = ids
        h[n:n + b] = as_cpu_tensor(positions, torch.long)
        h[2 * n:2 * n + b] = as_cpu_tensor(slot_mapping, torch.long)
        h[3 * n:3 * n + b] = as_cpu_tensor(seq_lens, torch.long)
        tv = h[4 * n:].view(n, w)
        tv[:b].fill_(self.runner.null_block)
        tv[:b, :tables.shape[1]] = tables
        rows = 4 * n + b * w  # copy only what this step uses (ids..seq_lens in full: their tails are padding)
        self.dev[:rows].copy_(h[:rows], non_blocking=True)
        if self.copied is not None:
            self.copied.record()
        if token_src is not None:  # rows -> the previous step's tokens, on the device (queued after that step)
            self.ids[:b].copy_(token_src[0].index_select(0, self.ids[:b]))
        self.lens32[:b].copy_(self.dev[3 * n:3 * n + b])
        self.tables32[:b].copy_(self.dev[4 * n:4 * n + b * w].view(b, w))
        self._pad(b)
        if self.copied is None:  # capture=False: run the same forward on the same buffers
            return self.graphs[size]()[:b]
        self.graphs[size].replay()
        return self.outputs[size][:b]

    def __repr__(self) -> str:
        return (f"DecodeGraphs({len(self.sizes)} sizes 1..{self.max_batch}, table width {self.width}, "
                f"captured in {getattr(self, 'capture_seconds', 0):.1f} s)")
