"""The runner's inputs for one scheduled step, built on the host in numpy (the engine's per-step host cost).

NOTE (host cost per step): at 100k tokens/s over 1,024 sequences a whole decode step has ~10 ms, so this must be
O(B) with a tiny constant: the only per-request Python is gathering a few ints from each request; positions, the
slot mapping and the [B, W] block-table gather are numpy over the KV manager's persistent int32 tables.
"""
from __future__ import annotations

import numpy as np
import torch


def to_device(device: torch.device, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """CPU tensors -> the same tensors on `device`, in ONE pinned, non-blocking copy (returned as views of one
    device buffer); unchanged on the CPU.

    NOTE (why not `t.to("cuda")`): from pageable memory that is cudaMemcpyAsync followed by cudaStreamSynchronize
    (PyTorch's memcpy_and_sync): the host waits for every kernel queued on the stream, i.e. for the step in flight
    when steps overlap, and the GPU then idles while the host prepares and launches this step. The mixed (prefill)
    path made seven such copies a step until the twelfth session. Through pinned memory the copy is queued behind
    the step in flight and the host goes on; the caching host allocator keeps the pinned block until the copy ran."""
    if device.type != "cuda":
        return tensors
    host, offsets = pack_bytes(tensors, pin=True)
    return unpack_bytes(host.to(device, non_blocking=True), tensors, offsets)


def pack_bytes(tensors, pin: bool = False) -> tuple[torch.Tensor, list[int]]:
    """The tensors' bytes one after another in one uint8 buffer (pinned if `pin`), each at an 8-byte-aligned offset
    (so every slice views back as its own dtype). Returns (buffer, offsets)."""
    flat = [t.contiguous().view(-1).view(torch.uint8) for t in tensors]
    offsets, total = [], 0
    for f in flat:
        offsets.append(total)
        total += -(-f.numel() // 8) * 8
    buf = torch.empty(total, dtype=torch.uint8, pin_memory=pin)
    for f, o in zip(flat, offsets):
        buf[o:o + f.numel()].copy_(f)
    return buf, offsets


def unpack_bytes(buf: torch.Tensor, like, offsets: list[int]) -> tuple[torch.Tensor, ...]:
    """Views of `buf` (pack_bytes' layout, wherever it now lives) with the dtypes and shapes of the tensors `like`."""
    return tuple(buf[o:o + t.numel() * t.element_size()].view(t.dtype).view(t.shape) for t, o in zip(like, offsets))


def int64_tensor(values: list[int]) -> torch.Tensor:
    """A CPU int64 tensor of a list of ints through numpy: ~4x faster than torch.tensor(list) at a step's sizes
    (~11 vs ~47 us for 800 ints on the CPU box), which the engine builds several of per step."""
    return torch.from_numpy(np.fromiter(values, np.int64, len(values)))


def prepare_inputs(plan, kv, as_tensors: bool = True) -> tuple:
    """A SchedulerOutput's inputs for ModelRunner.execute: token_ids [T], positions [T], q_lens [B], seq_lens [B],
    block_tables [B, W] (int32, zero-padded) and slot_mapping [T], as CPU torch tensors (`as_tensors`) or lists.
    A decode row whose token is still on the device (overlapped decode) carries its placeholder here; the runner
    replaces it from `token_src`."""
    scheduled = plan.scheduled
    b, rows_of = len(scheduled), kv.rows
    rows = np.fromiter([rows_of[r.request_id] for r, _ in scheduled], np.int64, b)  # [B]
    starts = np.fromiter([r.num_computed_tokens for r, _ in scheduled], np.int64, b)  # [B] first new position
    if plan.decode_only:  # one token each: positions are the starts
        token_ids = [r.token_at(r.num_computed_tokens) for r, _ in scheduled]
        q_lens, positions, slots = np.ones(b, np.int64), starts, kv.slots(rows, starts)
    else:
        token_ids = []
        for req, n in scheduled:
            if n == 1:  # a decode row (most of a mixed step's rows)
                token_ids.append(req.token_at(req.num_computed_tokens))
            else:
                c = req.num_computed_tokens
                token_ids += req.token_slice(c, c + n)
        q_lens = np.fromiter([n for _, n in scheduled], np.int64, b)  # [B]
        cu = np.cumsum(q_lens)  # [B]
        positions = np.arange(cu[-1]) - np.repeat(cu - q_lens - starts, q_lens)  # [T]
        slots = kv.slots(np.repeat(rows, q_lens), positions)  # [T]
    seq_lens = starts + q_lens  # [B] tokens cached after this step
    tables = kv.block_tables(rows, -(-int(seq_lens.max()) // kv.block_size))  # [B, W]
    if not as_tensors:
        return token_ids, positions.tolist(), q_lens.tolist(), seq_lens.tolist(), tables.tolist(), slots.tolist()
    t = torch.from_numpy
    return (int64_tensor(token_ids), t(positions), t(q_lens.astype(np.int32)),
            t(seq_lens.astype(np.int32)), t(tables), t(slots))
