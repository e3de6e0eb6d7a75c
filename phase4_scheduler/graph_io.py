"""A decode graph's inputs read straight from pinned host memory, its greedy tokens written straight back.

NOTE (why). Between two decode-graph replays the GPU used to run, outside any graph: the host->device copy of the
step's staged inputs (one cudaMemcpyAsync on the copy engine), an index_select gathering the input ids from the
previous step's tokens (overlapped decode), then after the replay the greedy argmax and the device->host copy of
the sampled tokens. At B=1 on the H100 that is ~10 us of GPU time a step plus each operation's start
(profile_decode: "copy 9-10 us, sampling 3 us"), against a 0.90 ms forward: the engine's ms/token sat 11-18 us
above the graph replay's own time (results/latency_s1208l_h100.json, profile_host_b1_s1209h_h100.json).

Here both ends move into the graph (`DecodeGraphs`, `TITAN_GRAPH_IO=direct`, the default on CUDA):
- `stage_inputs` (first node): one kernel reads the staged ids, rows, positions, slots, seq_lens and block-table
  rows from the PINNED host buffer through the GPU's mapping of it (unified addressing: a pinned host pointer is
  valid on the device, read over PCIe) and writes the graph's device buffers; a row whose staged `rows` entry is
  >= 0 takes its id from `tok[rows]` instead (the previous step's token, still on the device), -1 the staged id.
- `greedy_argmax(..., out=tok, host_out=...)` (last node): the argmax writes each row's token to the device buffer
  `tok` (the next step gathers from it, the sampler overwrites sampled rows there) and to a pinned host buffer, so
  an all-greedy step needs no device->host copy: the host waits on an event recorded after the replay.

Both staging and host-token buffers are doubled (a graph per size and parity): the host fills parity k % 2 for the
k-th replay while replay k - 1 may still be reading the other one, and before it writes it waits for replay k - 2's
event (normally long complete: the engine resolves step k - 2 before it launches step k).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

STAGE_BLOCK = 1024  # elements a program: one program up to 1,024 rows (and their block-table entries)


@triton.jit
def stage_inputs_kernel(h_ids, h_rows, h_pos, h_slots, h_lens, h_tables, tok,
                        ids, pos, slots, lens, tables, n, n_tab, BLOCK: tl.constexpr):
    """Rows [0, n) of ids / pos / slots / lens and entries [0, n_tab) of the flattened block tables, from the h_*
    buffers (pinned host memory on the GPU; any memory under the interpreter); ids[i] = tok[h_rows[i]] where
    h_rows[i] >= 0, else h_ids[i]."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = e < n
    r = tl.load(h_rows + e, mask=m, other=-1)
    x = tl.load(h_ids + e, mask=m, other=0)
    g = tl.load(tok + r, mask=m & (r >= 0), other=0)
    tl.store(ids + e, tl.where(r >= 0, g, x), mask=m)
    tl.store(pos + e, tl.load(h_pos + e, mask=m), mask=m)
    tl.store(slots + e, tl.load(h_slots + e, mask=m), mask=m)
    tl.store(lens + e, tl.load(h_lens + e, mask=m), mask=m)
    mt = e < n_tab
    tl.store(tables + e, tl.load(h_tables + e, mask=mt), mask=mt)


def stage_inputs(host: tuple, dev: tuple, tok: torch.Tensor, n: int) -> None:
    """host, dev: (ids, pos, slots, rows [N] int64, lens [N] int32, tables [N, W] int32) views (cuda_graphs'
    staging layout), host pinned; the first n rows of each staged into dev, ids gathered from tok where rows >= 0.
    Capturable: no host sync, fixed addresses."""
    h_ids, h_pos, h_slots, h_rows, h_lens, h_tables = host
    ids, pos, slots, _, lens, tables = dev
    if not (1 <= n <= ids.shape[0]):
        raise ValueError(f"stage_inputs: {n} rows for buffers of {ids.shape[0]}")
    n_tab = n * tables.shape[1]
    stage_inputs_kernel[(triton.cdiv(n_tab, STAGE_BLOCK),)](
        h_ids, h_rows, h_pos, h_slots, h_lens, h_tables, tok, ids, pos, slots, lens, tables, n, n_tab,
        BLOCK=STAGE_BLOCK, num_warps=4)


def stage_inputs_ref(host: tuple, dev: tuple, tok: torch.Tensor, n: int) -> None:
    """What stage_inputs does, in PyTorch (the copy path's two operations, for the tests)."""
    h_ids, h_pos, h_slots, h_rows, h_lens, h_tables = host
    ids, pos, slots, _, lens, tables = dev
    r = h_rows[:n].to(ids.device)
    gathered = tok.index_select(0, r.clamp(min=0))
    ids[:n] = torch.where(r >= 0, gathered, h_ids[:n].to(ids.device))
    pos[:n], slots[:n], lens[:n], tables[:n] = h_pos[:n], h_slots[:n], h_lens[:n], h_tables[:n]
