"""Unit tests of BlockTableManager (block tables, slot mapping, fork + copy-on-write) on both implementations."""
import pytest

from phase1_rust_allocator.errors import (DuplicateSequenceError, InvalidArgumentError, OutOfBlocksError,
                                          UnknownSequenceError)


def test_append_and_slot_mapping(impl):
    m = impl.BlockTableManager(8, block_size=4)
    m.add_sequence(10)
    assert m.append_tokens(10, 6) == []
    assert m.block_table(10) == [0, 1] and m.num_tokens(10) == 6
    assert m.slot_mapping([10], [6]) == [0, 1, 2, 3, 4, 5]
    m.add_sequence(11)
    slots, copies = m.append_tokens_batch([10, 11], [3, 2])
    assert slots == [6, 7, 8, 12, 13] and copies == []  # seq 10: block 1 then new block 2; seq 11: block 3
    assert m.block_tables([10, 11]) == [[0, 1, 2], [3]]
    assert m.slot_mapping([11, 10]) == [13, 8]  # default: the last token of each (a decode step)


def test_fork_copy_on_write(impl):
    m = impl.BlockTableManager(8, block_size=4)
    m.add_sequence(1)
    m.append_tokens(1, 6)
    m.fork(1, 2)
    assert m.block_table(2) == [0, 1] and m.refcount(0) == 2 and m.refcount(1) == 2
    assert m.num_blocks_needed(2, 1) == 1 and m.can_append(2, 1)
    assert m.append_tokens(2, 1) == [(1, 2)]  # the half-full shared block is copied before the write
    assert m.block_table(2) == [0, 2] and m.refcounts()[:3] == [2, 1, 1]
    assert m.append_tokens(1, 1) == []  # the parent's block is private again
    assert m.free_sequence(1) == 1 and m.free_sequence(2) == 2
    assert m.num_free_blocks == 8 and m.num_sequences == 0


def test_full_shared_block_needs_no_copy(impl):
    m = impl.BlockTableManager(4, block_size=4)
    m.add_sequence(1)
    m.append_tokens(1, 4)
    m.fork(1, 2)
    assert m.append_tokens(2, 1) == [] and m.block_table(2) == [0, 1]


def test_batch_is_all_or_nothing(impl):
    m = impl.BlockTableManager(3, block_size=4)
    for s in (1, 2):
        m.add_sequence(s)
        m.append_tokens(s, 4)
    with pytest.raises(OutOfBlocksError, match="need 2, 1 free"):
        m.append_tokens_batch([1, 2], [1, 1])
    assert (m.num_tokens(1), m.num_tokens(2), m.num_free_blocks) == (4, 4, 1)
    assert not m.can_append(1, 5) and m.can_append(1, 4)


def test_sequence_errors(impl):
    m = impl.BlockTableManager(4, block_size=4)
    with pytest.raises(UnknownSequenceError, match="call add_sequence\\(7\\) first"):
        m.append_tokens(7, 1)
    with pytest.raises(UnknownSequenceError):
        m.free_sequence(7)
    m.add_sequence(7)
    with pytest.raises(DuplicateSequenceError):
        m.add_sequence(7)
    with pytest.raises(DuplicateSequenceError):
        m.fork(7, 7)
    with pytest.raises(InvalidArgumentError, match="appears twice"):
        m.append_tokens_batch([7, 7], [1, 1])
    with pytest.raises(InvalidArgumentError, match="differ in length"):
        m.slot_mapping([7], [1, 2])
    with pytest.raises(InvalidArgumentError, match="has 0 tokens"):
        m.slot_mapping([7], [1])
    with pytest.raises(InvalidArgumentError):
        m.append_tokens(7, -2)
    with pytest.raises(KeyError):  # UnknownSequenceError is a KeyError too
        m.block_table(8)
    assert m.seq_ids() == [7] and m.has_sequence(7) and not m.has_sequence(8)
    assert "sequences=1" in repr(m)
