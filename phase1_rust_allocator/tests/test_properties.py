"""Property tests: random operation sequences through the Rust crate and the Python reference side by side.

After every operation both must agree on the outcome (return value, or the same exception class) and on the
observable state (free counts, reference counts, block tables, token counts), and the invariants must hold:
a block's reference count equals the number of table slots that point at it, no table holds a block twice, free
blocks are exactly those with count 0, and once every sequence is freed every block is free again.
"""
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phase1_rust_allocator import reference, rust

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run_both(a, b, name, *args):
    """Call `name` on both; require the same result or the same exception class."""
    outs = []
    for obj in (a, b):
        try:
            outs.append(("ok", getattr(obj, name)(*args)))
        except Exception as e:  # the class is the observable outcome
            outs.append(("err", type(e).__name__))
    assert outs[0] == outs[1], f"{name}{args}: rust {outs[0]} vs python {outs[1]}"
    return outs[0]


# ---- BlockTableManager ---------------------------------------------------------------------------------------
# A sequence argument k < 4 names a live sequence (k modulo their number) when there is one; k = 4, or no live
# sequence, names an unknown id. Most operations then hit live sequences (so forks, shared blocks and copy-on-write
# happen) and some hit unknown ones.
K = st.integers(0, 4)
N = st.integers(0, 9)
manager_ops = st.one_of(
    st.tuples(st.just("add_sequence"), st.booleans()),  # True: a fresh id, False: an existing one (an error)
    st.tuples(st.just("append_tokens"), K, N),
    st.tuples(st.just("append_tokens"), K, N),
    st.tuples(st.just("append_tokens_batch"), st.lists(st.tuples(K, N), max_size=4)),
    st.tuples(st.just("fork"), K, st.booleans()),  # True: to a fresh id, False: to an existing one (an error)
    st.tuples(st.just("fork"), K, st.booleans()),
    st.tuples(st.just("free_sequence"), K),
    st.tuples(st.just("can_append"), K, st.integers(0, 40)),
    st.tuples(st.just("slot_mapping"), st.lists(st.tuples(K, st.integers(0, 5)), max_size=3)),
    st.tuples(st.just("slot_mapping_bad_lengths"), K),
)


def resolve(op, live: list[int], fresh: int):
    """Turn a generated op into (method name, args) against the current live sequence ids."""
    sid = lambda k: live[k % len(live)] if live and k < 4 else 1000 + k  # noqa: E731
    name, *a = op
    if name == "add_sequence":
        return name, (fresh if a[0] or not live else live[0],)
    if name == "fork":
        return name, (sid(a[0]), fresh if a[1] or not live else live[-1])
    if name in ("append_tokens_batch", "slot_mapping"):
        return name, ([sid(k) for k, _ in a[0]], [n for _, n in a[0]])
    if name == "slot_mapping_bad_lengths":
        return "slot_mapping", ([sid(a[0])], [1, 1])
    if name in ("append_tokens", "can_append"):
        return name, (sid(a[0]), a[1])
    return name, (sid(a[0]),)


def check_manager_state(r, p):
    assert r.num_free_blocks == p.num_free_blocks
    assert r.refcounts() == p.refcounts()
    assert r.seq_ids() == p.seq_ids()
    ids = p.seq_ids()
    assert r.block_tables(ids) == p.block_tables(ids)
    assert [r.num_tokens(s) for s in ids] == [p.num_tokens(s) for s in ids]
    # invariants (checked on the reference; the Rust state is equal to it)
    refs, bs = Counter(), p.block_size
    for s in ids:
        t = p.block_table(s)
        assert len(set(t)) == len(t), "a table holds a block twice"
        assert len(t) == -(-p.num_tokens(s) // bs), "table length != ceil(tokens / block_size)"
        refs.update(t)
    rc = p.refcounts()
    assert all(rc[b] == refs[b] for b in range(len(rc))), "refcount != number of table slots pointing at the block"
    assert p.num_free_blocks == rc.count(0)


@SETTINGS
@given(num_blocks=st.integers(1, 24), block_size=st.sampled_from([1, 2, 3, 4, 16]),
       prompts=st.lists(st.integers(0, 12), min_size=1, max_size=3), ops=st.lists(manager_ops, max_size=40))
def test_block_table_manager_matches_reference(num_blocks, block_size, prompts, ops):
    r, p = rust.BlockTableManager(num_blocks, block_size), reference.BlockTableManager(num_blocks, block_size)
    for s, n in enumerate(prompts):  # start from a few live sequences
        run_both(r, p, "add_sequence", s)
        run_both(r, p, "append_tokens", s, n)
    for i, op in enumerate(ops):
        name, args = resolve(op, p.seq_ids(), fresh=100 + i)
        run_both(r, p, name, *args)
        check_manager_state(r, p)
    for s in p.seq_ids():
        run_both(r, p, "free_sequence", s)
    check_manager_state(r, p)
    assert p.num_free_blocks == r.num_free_blocks == num_blocks, "blocks leaked after every sequence was freed"


# ---- BlockAllocator ------------------------------------------------------------------------------------------
BLOCK = st.integers(-1, 9)
allocator_ops = st.one_of(
    st.tuples(st.just("allocate")),
    st.tuples(st.just("allocate_n"), st.integers(0, 5)),
    st.tuples(st.just("free"), BLOCK),
    st.tuples(st.just("free_n"), st.lists(BLOCK, max_size=4)),
    st.tuples(st.just("incref"), BLOCK),
    st.tuples(st.just("can_allocate"), st.integers(0, 10)),
)


@SETTINGS
@given(num_blocks=st.integers(1, 8), ops=st.lists(allocator_ops, max_size=50))
def test_block_allocator_matches_reference(num_blocks, ops):
    r, p = rust.BlockAllocator(num_blocks), reference.BlockAllocator(num_blocks)
    for name, *args in ops:
        run_both(r, p, name, *args)
        assert r.refcounts() == p.refcounts()
        assert r.num_free_blocks == p.num_free_blocks == p.refcounts().count(0)


# ---- BuddyAllocator ------------------------------------------------------------------------------------------
buddy_ops = st.one_of(st.tuples(st.just("allocate"), st.integers(0, 9)),
                      st.tuples(st.just("free"), st.integers(-1, 20)),
                      st.tuples(st.just("can_allocate"), st.integers(0, 20)))


def check_buddy(b, live: dict):
    runs = b.free_runs()
    covered = sorted([(s, n) for s, n in runs] + [(s, n) for s, n in live.items()])
    pos = 0
    for s, n in covered:  # free runs and live allocations tile 0..N exactly, aligned to their size
        assert s == pos and s % n == 0
        pos += n
    assert pos == b.num_total_blocks
    free = set(runs)
    merged = [(s, n) for s, n in runs if (s ^ n, n) in free]
    assert not merged, f"two free buddies left unmerged: {merged}"
    assert b.num_free_blocks == sum(n for _, n in runs)


@SETTINGS
@given(num_blocks=st.integers(1, 20), ops=st.lists(buddy_ops, max_size=40))
def test_buddy_matches_reference(num_blocks, ops):
    r, p = rust.BuddyAllocator(num_blocks), reference.BuddyAllocator(num_blocks)
    live: dict[int, int] = {}
    for name, *args in ops:
        kind, out = run_both(r, p, name, *args)
        if kind == "ok" and name == "allocate":
            live[out] = p.allocation_size(out)
        elif kind == "ok" and name == "free":
            del live[args[0]]
        assert r.free_runs() == p.free_runs()
        assert r.external_fragmentation() == p.external_fragmentation()
        check_buddy(p, live)
    for s in list(live):
        run_both(r, p, "free", s)
    assert p.free_runs() == r.free_runs() and p.num_free_blocks == num_blocks
