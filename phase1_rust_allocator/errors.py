"""Typed errors of the block manager, shared by the Rust extension and the Python reference.

The Rust binding (kv_cache_manager) raises exactly these classes: it looks them up here by name when an error happens
(see src/python.rs). So one `except OutOfBlocksError:` serves both implementations, and the scheduler (phase 4) can
catch `OutOfBlocksError` to preempt a sequence whichever allocator backs it.
"""
from __future__ import annotations

from common.errors import TitanError


class AllocatorError(TitanError, RuntimeError):
    """Base class of every block-manager error; the state is unchanged when one is raised."""


class OutOfBlocksError(AllocatorError):
    """Not enough free blocks (for the buddy allocator: no free run large enough). Preempt or add blocks."""


class DoubleFreeError(AllocatorError, ValueError):
    """free() of a block whose reference count is already 0 (or, for buddy, not the start of an allocation)."""


class InvalidBlockError(AllocatorError, ValueError):
    """A block id outside 0..num_blocks, or incref() of a free block."""


class UnknownSequenceError(AllocatorError, KeyError):
    """A sequence id the manager does not know (never added, or already freed)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class DuplicateSequenceError(AllocatorError, ValueError):
    """add_sequence()/fork() with an id that is already in use."""


class InvalidArgumentError(AllocatorError, ValueError):
    """Any other bad argument: a negative count, mismatched list lengths, a sequence twice in one batch."""


__all__ = ["AllocatorError", "OutOfBlocksError", "DoubleFreeError", "InvalidBlockError", "UnknownSequenceError",
           "DuplicateSequenceError", "InvalidArgumentError"]
