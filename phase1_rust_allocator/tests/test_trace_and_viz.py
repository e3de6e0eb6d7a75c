"""The ShareGPT loader, the continuous-batching trace and the memory map used by the benchmark and the notebook."""
import pytest

from common.data import first_exchange, iter_sharegpt, sharegpt_request_lengths
from phase1_rust_allocator import reference, rust
from phase1_rust_allocator.trace import arrival_steps, simulate_buddy, simulate_paged
from phase1_rust_allocator.viz import internal_fragmentation, memory_map


def test_iter_sharegpt_reads_records_one_by_one(tmp_path):
    f = tmp_path / "torn.json"  # two complete records, then a record cut in the middle (like the real file)
    f.write_text('[\n {"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},'
                 ' {"id": "b", "conversations": []},\n {"id": "c", "conv')
    recs = list(iter_sharegpt(path=f))
    assert [r["id"] for r in recs] == ["a", "b"]
    assert first_exchange(recs[0]) == ("hi", "yo") and first_exchange(recs[1]) is None
    assert [r["id"] for r in iter_sharegpt(limit=1, path=f)] == ["a"]


def test_sharegpt_lengths_with_a_given_tokenizer():
    class Words:
        def encode(self, text):
            return text.split()

    lengths = sharegpt_request_lengths(20, tokenizer=Words())
    assert len(lengths) == 20
    assert all(p >= 4 and o >= 4 and p <= 1024 and p + o <= 2048 for p, o in lengths)
    with pytest.raises(ValueError):
        sharegpt_request_lengths(0, tokenizer=Words())


def test_paged_trace_is_identical_on_both_and_frees_everything():
    lengths = [(37, 20), (5, 60), (120, 9), (64, 64), (17, 33)] * 6
    runs = {}
    for name, impl in (("rust", rust), ("python", reference)):
        m = impl.BlockTableManager(16, 16)
        runs[name] = simulate_paged(m, lengths, rate=1.0, max_batch=8)
        assert m.num_free_blocks == 16 and m.num_sequences == 0
    assert runs["rust"].ops == runs["python"].ops
    t = runs["rust"]
    assert t.finished == len(lengths) and t.preemptions > 0  # 16 blocks is tight: the trace exercises preemption
    assert 0 < t.internal_fragmentation < 0.5


def test_buddy_trace_blocks_on_fragmentation():
    lengths = [(100, 40), (20, 10), (300, 200), (40, 20)] * 10
    res = simulate_buddy(rust.BuddyAllocator(64), lengths, 16, rate=2.0, max_batch=16)
    assert res.mean_batch > 0 and 0 <= res.mean_external_fragmentation < 1
    assert res.internal_fragmentation > 0  # power-of-two rounding and whole-length reservation


def test_arrivals_are_sorted_and_seeded():
    a = arrival_steps(50, 0.5, seed=1)
    assert a == sorted(a) and a == arrival_steps(50, 0.5, seed=1) and a != arrival_steps(50, 0.5, seed=2)


def test_memory_map_counts_shared_blocks_once(impl):
    m = impl.BlockTableManager(8, 4)
    m.add_sequence(0)
    m.append_tokens(0, 6)
    m.fork(0, 1)
    mm = memory_map(m)
    assert sorted(mm) == [0, 1] and mm[1].owners == [0, 1] and mm[1].filled == 2
    assert internal_fragmentation(m) == pytest.approx(1 - 6 / 8)
