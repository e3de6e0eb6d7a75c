"""Host-side argument checks shared by the paged attention wrappers (phase 2's MLA decode, phase 3's paged kernels).

NOTE (design): a Triton kernel loads and stores through block ids and slots without bounds checks, so a bad id is
not an error there but a silent wrong answer (a read of another block) or a crash (a write outside the cache). The
checks that only compare shapes, dtypes and strides are free and run everywhere. The ones that read a tensor's
VALUES (`check_block_ids`, `check_slots`, `values_checkable`) run only when the tensor is on the CPU (the
interpreter, the CPU path): on CUDA they would be a device-to-host sync in the decode loop, which callers there
avoid; the GPU suite's own tests cover the GPU path with valid tables.
"""
from __future__ import annotations

import numbers

import torch


def require_tensors(where: str, **named) -> None:
    """TypeError naming the first argument that is not a tensor (a list reached `.dim()` deep inside otherwise)."""
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__} "
                            f"(build it with torch.tensor(...) on the kernel's device)")


def require_positive_ints(where: str, **named) -> None:
    """ValueError naming the first argument that is not an int >= 1 (bools refused; 0 / -1 / 1.5 failed deep inside
    the allocator or torch otherwise)."""
    for name, n in named.items():
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"{where}: {name} must be an int >= 1, got {n!r}")


def require_float(where: str, name: str, value) -> None:
    """A Python number: a tensor reached the kernel as a pointer (an error from inside Triton's type checker)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a Python float, got {type(value).__name__}; pass float({name})")


def require_power_of_two(where: str, name: str, value) -> None:
    """Triton tile sizes (tl.arange extents) must be powers of two; None means the default."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1
                              or value & (value - 1)):
        raise ValueError(f"{where}: {name} must be a power of two (a Triton tile size), got {value!r}")


def values_checkable(*tensors: torch.Tensor) -> bool:
    """True where reading the tensors' values costs no device sync (all on the CPU)."""
    return all(t.device.type == "cpu" for t in tensors)


def check_block_ids(where: str, block_table: torch.Tensor, seq_lens: torch.Tensor, block_size: int,
                    num_blocks: int, allow_empty: bool = True) -> None:
    """seq_lens within [0 or 1, the table's capacity] and every block id a sequence USES (its first
    ceil(len / block_size) entries; the rest may be any padding) in [0, num_blocks). Call on CPU tensors only."""
    if seq_lens.numel() == 0:
        return
    lens = seq_lens.long()
    low = 0 if allow_empty else 1
    if int(lens.min()) < low:
        raise ValueError(f"{where}: seq_lens must be >= {low}, got {int(lens.min())} "
                         f"(sequence {int(lens.argmin())})")
    cap = block_table.shape[1] * block_size
    if int(lens.max()) > cap:
        raise ValueError(f"{where}: seq_lens up to {int(lens.max())} (sequence {int(lens.argmax())}) need more than "
                         f"block_table's {block_table.shape[1]} blocks of {block_size} tokens; widen the table")
    used = torch.arange(block_table.shape[1]) < ((lens + block_size - 1) // block_size)[:, None]  # [B, max_blocks]
    bad = used & ((block_table < 0) | (block_table >= num_blocks))
    if bool(bad.any()):
        seq, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{where}: block_table[{seq}, {col}] = {int(block_table[seq, col])} is not a block of the "
                         f"cache (ids 0..{num_blocks - 1}); sequence {seq} uses its first "
                         f"{(int(lens[seq]) + block_size - 1) // block_size} entries. Fill the table from the "
                         "allocator that owns the cache's blocks.")


def check_slots(where: str, slot_mapping: torch.Tensor, num_slots: int) -> None:
    """Every slot < num_slots (negative slots are padding, skipped by the writers). Call on CPU tensors only."""
    if slot_mapping.numel() and int(slot_mapping.max()) >= num_slots:
        i = int(slot_mapping.argmax())
        raise ValueError(f"{where}: slot_mapping[{i}] = {int(slot_mapping[i])} is outside the cache's {num_slots} "
                         "slots (num_blocks * block_size); slots come from the block table: "
                         "block_id * block_size + offset (negative = skip)")
