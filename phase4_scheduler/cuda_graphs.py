"""CUDA graphs for decode steps: capture once per batch size, replay every step.

An eager decode step of TinyLlama launches ~1,000 kernels from Python and is launch-bound (phase 0: 22 ms per
step while the GPU works 2.8 ms). A captured graph replays the same kernels with one launch.

    sizes    1 2 4 8 16 24 ... 256 320 384 ... max_num_seqs   (small powers of two, multiples of 8, then of 64)
    a step with B decode tokens replays the graph of the smallest size >= B; rows B.. are padding

NOTE (static buffers and the scratch page): a graph reads its inputs from fixed addresses, so every step writes its
token ids, positions, slot mapping, seq_lens and block tables into ONE pinned host buffer laid out exactly like the
device buffer the graphs read (int64 ids | pos | slots | rows, then int32 seq_lens | tables: the dtypes the kernels
take). With TITAN_GRAPH_IO=direct (the default) the graph's first kernel reads that pinned buffer itself and its
last one writes the greedy tokens back to pinned memory, so nothing runs between two replays (graph_io.py; the
staging and host-token buffers are doubled, a graph per size and parity); with "copy", ONE host->device copy moves
it before the replay (an overlapped step adds one index_select, its ids gathered on the device from the previous
step's tokens), and the sampler's argmax and a device->host copy follow. Padding rows must be harmless: they
write their K/V into a scratch block that no request owns (index num_blocks of the pool, one block past what the
allocator hands out) and attend over one token of it; they are written on the host, and only the rows a larger
step left behind are re-padded. The block-table buffer is as wide as max_model_len needs, so the decode kernel's
split count (a function of the table width) is the same at capture and at every replay.
"""
from __future__ import annotations

import os
import time
import warnings

import torch

from common.cuda_graph import warm_up_and_capture
from phase4_scheduler.argmax import greedy_argmax
from phase4_scheduler.fused_kernels import interpreting
from phase4_scheduler.graph_io import stage_inputs
from phase4_scheduler.model_runner import BatchAttention, as_cpu_tensor, pad_tables


def capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, then multiples of 8 up to 256, then of 64, and max_num_seqs itself: a padded step wastes < 25%
    (< 12.5% past 16) of its rows, and capturing 1,024 sizes' worth of graphs stays a ~40-size job."""
    sizes = [s for s in (1, 2, 4) if s < max_num_seqs] + list(range(8, min(max_num_seqs, 256) + 1, 8))
    sizes += list(range(320, max_num_seqs + 1, 64))
    if not sizes or sizes[-1] != max_num_seqs:
        sizes.append(max_num_seqs)
    return sorted(set(sizes))


GRAPH_IO_ENV, GRAPH_IO_MODES = "TITAN_GRAPH_IO", ("direct", "copy")  # read when the graphs are built


def graph_io_mode() -> str:
    """"direct" (default): the graphs read their staged inputs from pinned host memory and write their greedy tokens
    back (graph_io.py); "copy": one host->device copy and the id gather outside the graph, argmax and the
    device->host copy after it (the way before; bench_latency's '+graphcopy')."""
    mode = os.environ.get(GRAPH_IO_ENV, "direct")
    if mode not in GRAPH_IO_MODES:
        raise ValueError(f"{GRAPH_IO_ENV}={mode!r}: expected one of {GRAPH_IO_MODES}")
    return mode


class _Staging:
    """One host buffer in the graphs' input layout (`DecodeGraphs._views`), with the rows it may hold other than
    padding."""

    def __init__(self, graphs, pin: bool):
        self.buf = torch.zeros(graphs._nbytes(graphs.max_batch), dtype=torch.uint8, pin_memory=pin)
        self.views = graphs._views(self.buf)
        self.ids, self.pos, self.slots, self.rows, self.lens, self.tables = self.views
        self.runner, self.filled = graphs.runner, graphs.max_batch
        self.pad(0)

    def pad(self, b: int) -> None:
        """Rows b.. become harmless padding (scratch slot, one cached token, the staged id 0); only rows a larger
        step left. Rows [0, b) are the caller's to fill."""
        if self.filled <= b:
            self.filled = b
            return
        r, rows = self.runner, slice(b, self.filled)
        self.ids[rows] = 0
        self.pos[rows] = 0
        self.rows[rows] = -1
        self.slots[rows] = r.null_block * r.block_size
        self.lens[rows] = 1
        self.tables[rows] = r.null_block
        self.filled = b


class DecodeGraphs:
    def __init__(self, runner, max_num_seqs: int, max_model_len: int, capture: bool = True,
                 io: str | None = None):
        """`capture=False` keeps the static buffers and padding but calls the forward instead of replaying a graph
        (the CPU tests check the plumbing that way). `io`: "direct" or "copy" (default: graph_io_mode() with capture,
        "copy" without; "direct" without capture runs graph_io's kernels, under the Triton interpreter). A "direct"
        whose staging kernel cannot read pinned memory on this machine falls back to "copy" with a warning."""
        if capture and runner.device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA device; the runner is on {runner.device}")
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        self.runner = runner
        self.sizes = capture_sizes(max_num_seqs)
        self.max_batch = self.sizes[-1]
        self.width = -(-max_model_len // runner.block_size)  # block-table columns
        self.io = io or (graph_io_mode() if capture else "copy")
        if self.io not in GRAPH_IO_MODES:
            raise ValueError(f"io={self.io!r}: expected one of {GRAPH_IO_MODES}")
        direct = self.io == "direct"
        if direct and not capture and not interpreting():
            raise RuntimeError("io='direct' without capture runs the Triton kernels: it needs the interpreter")
        n, dev = self.max_batch, runner.device
        self.staging = [_Staging(self, capture) for _ in range(2 if direct else 1)]  # pinned on the GPU
        self.dev = torch.zeros_like(self.staging[0].buf, device=dev)
        self.dev_views = self._views(self.dev)
        self.ids, self.pos, self.slots, self.rows, self.lens32, self.tables32 = self.dev_views
        self.dev.copy_(self.staging[0].buf)
        self.tok = torch.zeros(n, dtype=torch.long, device=dev)  # "direct": the graphs' greedy tokens
        if direct and not self._direct_works(capture):
            self.io, direct, self.staging = "copy", False, self.staging[:1]
        # "copy": the staging buffer is free once its copy has run; "direct": staging / host tokens of parity p are
        # free once the replay that read / wrote them has completed
        self.done = [torch.cuda.Event() if capture else None for _ in self.staging]
        self.k = 0  # replays so far: replay k uses staging (and host tokens) k % 2 in "direct"
        self.host_tok = [torch.zeros(n, dtype=torch.long, pin_memory=capture) for _ in self.staging] if direct else []
        self.graphs: dict[tuple[int, int], object] = {}  # (size, parity) -> graph
        # every size's graph converts its logits into rows [0, size) of this one buffer instead of owning a
        # [size, V] fp32 tensor (47 sizes up to 1,024 seats held ~12k rows: 1.6 GB at TinyLlama's vocabulary); the
        # engine samples a step's logits before it launches the next step, so one buffer serves them all
        self.logits = torch.empty(n, runner.config.vocab_size, dtype=torch.float32, device=dev)
        self.steps = self.tokens = self.padded_tokens = 0  # replays, their rows, their graphs' sizes (step_shapes)
        t0 = time.perf_counter()
        pool = None
        for b in reversed(self.sizes):  # largest first: the smaller graphs reuse its memory pool
            ctx = BatchAttention(runner, self.tables32[:b], self.lens32[:b], self.slots[:b])
            for p in range(len(self.staging) if direct else 1):
                def step(b=b, ctx=ctx, p=p):
                    if direct:
                        stage_inputs(self.staging[p].views, self.dev_views, self.tok, b)
                    out = runner.forward(self.ids[:b], self.pos[:b], ctx, None, out=self.logits[:b])
                    if direct:
                        greedy_argmax(out, out=self.tok[:b], host_out=self.host_tok[p][:b])
                    return out

                if not capture:
                    self.graphs[b, p] = step
                    continue
                with torch.inference_mode():
                    g, _ = warm_up_and_capture(step, warmup=1, pool=pool)  # its output is a view of self.logits
                pool = g.pool() if pool is None else pool
                self.graphs[b, p] = g
        if capture:
            torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - t0

    def _direct_works(self, capture: bool) -> bool:
        """One staging pass from pinned memory before anything is captured; if this machine's device cannot read
        the pinned buffer (no mapping of it: Triton refuses the pointer), warn and let the graphs copy instead."""
        try:
            stage_inputs(self.staging[0].views, self.dev_views, self.tok, 1)
            if capture:
                torch.cuda.synchronize()
        except (ValueError, RuntimeError) as e:
            warnings.warn(f"direct graph I/O unavailable ({e}); the decode graphs copy their inputs instead "
                          f"({GRAPH_IO_ENV}=copy)", RuntimeWarning, stacklevel=3)
            return False
        return True

    @property
    def filled(self) -> int:
        """Rows of the last-used staging buffer that may hold something other than padding."""
        return self.staging[(self.k - 1) % len(self.staging)].filled

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

    def run(self, token_ids, positions, seq_lens, block_tables, slot_mapping, token_src=None) -> torch.Tensor:
        """Stage one decode step's inputs on the host and replay the graph for the next size >= B. `token_src` =
        (tokens on the device, rows [B] on the CPU): the ids are tokens[rows], gathered on the device. "copy": one
        host->device copy to the static buffers, then the gather; "direct": the graph reads the staging buffer
        itself and gathers from `tok` (graph_io.py), and `runner.graph_tokens` = (the step's greedy tokens on the
        device, their pinned host copy, the event after which it is complete)."""
        rows = None if token_src is None else as_cpu_tensor(token_src[1], torch.long)
        ids = as_cpu_tensor(token_ids, torch.long) if rows is None else rows
        b = ids.shape[0]
        size = next(s for s in self.sizes if s >= b)
        self.steps, self.tokens, self.padded_tokens = self.steps + 1, self.tokens + b, self.padded_tokens + size
        tables = pad_tables(block_tables)
        if tables.shape[1] > self.width:
            raise ValueError(f"a block table has {tables.shape[1]} blocks; the graphs hold {self.width} "
                             f"(max_model_len)")
        p = self.k % len(self.staging)
        st, done = self.staging[p], self.done[p]
        if done is not None:
            done.synchronize()  # the replay that last read this staging buffer ("copy": its copy) has run
        st.pad(b)
        if rows is None:
            st.ids[:b] = ids
            st.rows[:b] = -1
        else:
            st.rows[:b] = rows
        st.pos[:b] = as_cpu_tensor(positions, torch.long)
        st.slots[:b] = as_cpu_tensor(slot_mapping, torch.long)
        st.lens[:b] = as_cpu_tensor(seq_lens, torch.int32)
        st.tables[:b].fill_(self.runner.null_block)
        st.tables[:b, :tables.shape[1]] = tables
        self.k += 1
        if self.io == "direct":
            if rows is not None and token_src[0].data_ptr() != self.tok.data_ptr():  # a step outside these graphs
                if token_src[0].shape[0] > self.max_batch:
                    raise ValueError(f"token_src holds {token_src[0].shape[0]} tokens; the graphs hold "
                                     f"{self.max_batch} (max_num_seqs)")
                self.tok[:token_src[0].shape[0]].copy_(token_src[0])
            if done is None:  # capture=False (the interpreter): the same three steps, run now
                self.graphs[size, p]()
            else:
                self.graphs[size, p].replay()
                done.record()
            self.runner.graph_tokens = (self.tok[:b], self.host_tok[p][:b], done)
            return self.logits[:b]
        nbytes = self._nbytes(size)  # the tables of this graph's size: its padding rows included
        self.dev[:nbytes].copy_(st.buf[:nbytes], non_blocking=True)
        if done is not None:
            done.record()
        if rows is not None:  # rows -> the previous step's tokens, on the device (queued after that step)
            torch.index_select(token_src[0], 0, self.rows[:b], out=self.ids[:b])
        if done is None:  # capture=False: run the same forward on the same buffers
            self.graphs[size, 0]()
        else:
            self.graphs[size, 0].replay()
        return self.logits[:b]

    def __repr__(self) -> str:
        return (f"DecodeGraphs({len(self.sizes)} sizes 1..{self.max_batch}, table width {self.width}, "
                f"captured in {getattr(self, 'capture_seconds', 0):.1f} s)")
