"""Benchmark: the block manager on a ShareGPT continuous-batching trace, Rust vs the Python reference.

    python -m phase1_rust_allocator.bench_allocator [--requests 1000] [--num-blocks 2048] [--reps 5]

Writes results/bench_allocator.json (and results/trace.png):
- per-operation time through the Python binding, Rust vs Python: the whole recorded trace replayed (the headline),
  per kind of call, and micro-benchmarks of single allocator calls;
- internal fragmentation of the paged allocator (unused slots / allocated slots, over the trace) and across block
  sizes; the buddy allocator's external fragmentation, internal fragmentation and admissions blocked on the same
  arrivals.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

from tqdm import tqdm

from common.bench import positive_float, positive_int, results_dir, write_result
from common.data import sharegpt_request_lengths
from phase1_rust_allocator import reference, rust
from phase1_rust_allocator.errors import OutOfBlocksError
from phase1_rust_allocator.trace import simulate_buddy, simulate_paged

IMPLS = {"rust": rust, "python": reference}


def replay(impl, ops, num_blocks, block_size, collect=False):
    """Replay recorded calls on a fresh manager; returns (seconds, outputs if collect)."""
    m = impl.BlockTableManager(num_blocks, block_size)
    calls = [(getattr(m, name), args) for name, args in ops]
    outs = []
    t0 = time.perf_counter()
    for f, a in calls:
        try:
            r = f(*a)
        except OutOfBlocksError:
            r = "OutOfBlocks"
        if collect:
            outs.append(r)
    return time.perf_counter() - t0, outs


def per_kind_ns(impl, ops, num_blocks, block_size):
    """Mean ns per call for each kind of call (each call timed alone: includes ~50 ns of timer overhead)."""
    m = impl.BlockTableManager(num_blocks, block_size)
    acc = defaultdict(list)
    clock = time.perf_counter_ns
    for name, args in ops:
        f = getattr(m, name)
        t0 = clock()
        try:
            f(*args)
        except OutOfBlocksError:
            pass
        acc[name].append(clock() - t0)
    return {k: statistics.mean(v) for k, v in acc.items()}, {k: len(v) for k, v in acc.items()}


def micro_ns(impl, iters: int) -> dict:
    """ns per call of single allocator operations in a steady state (each loop body is a matched pair)."""
    a = impl.BlockAllocator(4096, 16)
    held = a.allocate_n(2048)  # a half-full pool
    out = {}

    def run(label, body, n):
        t0 = time.perf_counter_ns()
        body(n)
        out[label] = (time.perf_counter_ns() - t0) / n

    alloc, free, alloc_n, free_n, incref = a.allocate, a.free, a.allocate_n, a.free_n, a.incref

    def pairs(n):
        for _ in range(n):
            free(alloc())

    def batches(n):
        for _ in range(n):
            free_n(alloc_n(16))

    def shares(n):
        for i in range(n):
            b = held[i & 1023]
            incref(b)
            free(b)

    run("allocate+free", pairs, iters)
    run("allocate_n(16)+free_n(16)", batches, iters // 4)
    run("incref+free (share)", shares, iters)
    b = impl.BuddyAllocator(4096)
    for _ in range(64):
        b.allocate(16)
    balloc, bfree = b.allocate, b.free

    def buddy_pairs(n):
        for _ in range(n):
            bfree(balloc(16))

    run("buddy allocate(16)+free", buddy_pairs, iters // 2)
    m = impl.BlockTableManager(8192, 16)
    ids = list(range(64))
    for s in ids:
        m.add_sequence(s)
        m.append_tokens(s, 100)
    ones = [1] * 64

    def decode(n):
        for _ in range(n):
            m.append_tokens_batch(ids, ones)

    run("decode step, 64 seqs (append_tokens_batch)", decode, max(1, iters // 200))
    return out


def main(argv=None) -> int:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--requests", type=positive_int, default=1000)
    ap.add_argument("--num-blocks", type=positive_int, default=2048)
    ap.add_argument("--block-size", type=positive_int, default=16)
    ap.add_argument("--rate", type=positive_float, default=2.0, help="arrivals per decode step")
    ap.add_argument("--max-batch", type=positive_int, default=128)
    ap.add_argument("--reps", type=positive_int, default=5)
    ap.add_argument("--micro-iters", type=positive_int, default=100_000)
    args = ap.parse_args(argv)
    nb, bs = args.num_blocks, args.block_size

    lengths = sharegpt_request_lengths(args.requests)
    trace = simulate_paged(rust.BlockTableManager(nb, bs), lengths, args.rate, args.max_batch)
    ops = trace.ops
    print(f"trace: {len(lengths)} ShareGPT requests -> {len(ops)} manager calls over {trace.steps} steps, "
          f"{trace.preemptions} preemptions, mean batch {trace.mean_batch:.1f}")

    _, out_r = replay(rust, ops, nb, bs, collect=True)
    _, out_p = replay(reference, ops, nb, bs, collect=True)
    identical = out_r == out_p
    print(f"replay outputs identical (Rust vs Python): {identical}")

    replay_s = {k: [] for k in IMPLS}
    for _ in tqdm(range(args.reps), desc="trace replay"):
        for k, impl in IMPLS.items():
            replay_s[k].append(replay(impl, ops, nb, bs)[0])
    per_op_ns = {k: statistics.median(v) / len(ops) * 1e9 for k, v in replay_s.items()}
    # the ratio of back-to-back replays, median over reps: robust to a machine that slows down mid-run
    speedup = statistics.median(p / r for p, r in zip(replay_s["python"], replay_s["rust"]))
    print(f"per call (median of {args.reps} replays): rust {per_op_ns['rust']:.0f} ns, python "
          f"{per_op_ns['python']:.0f} ns -> {speedup:.1f}x")

    kinds, counts = {}, {}
    for k, impl in IMPLS.items():
        kinds[k], counts = per_kind_ns(impl, ops, nb, bs)
    per_kind = {name: {"calls": counts[name], "rust_ns": kinds["rust"][name], "python_ns": kinds["python"][name],
                       "speedup": kinds["python"][name] / kinds["rust"][name]} for name in counts}
    micro = {k: micro_ns(impl, args.micro_iters) for k, impl in tqdm(IMPLS.items(), desc="micro-benchmarks")}
    micro_table = {op: {"rust_ns": micro["rust"][op], "python_ns": micro["python"][op],
                        "speedup": micro["python"][op] / micro["rust"][op]} for op in micro["rust"]}
    for op, row in {**per_kind, **micro_table}.items():
        print(f"  {op:<44} rust {row['rust_ns']:>9.0f} ns  python {row['python_ns']:>10.0f} ns  {row['speedup']:6.1f}x")

    buddy = simulate_buddy(rust.BuddyAllocator(nb), lengths, bs, args.rate, args.max_batch)
    print(f"paged: internal fragmentation {trace.internal_fragmentation:.2%}, mean batch {trace.mean_batch:.1f}; "
          f"buddy: external {buddy.mean_external_fragmentation:.2%}, internal {buddy.internal_fragmentation:.2%}, "
          f"mean batch {buddy.mean_batch:.1f}, {buddy.blocked_by_fragmentation} admissions blocked by fragmentation")

    sweep = {}
    total_slots = nb * bs
    for b in tqdm([1, 4, 8, 16, 32, 64, 128], desc="block-size sweep"):
        t = simulate_paged(rust.BlockTableManager(total_slots // b, b), lengths, args.rate, args.max_batch)
        sweep[b] = {"internal_fragmentation": t.internal_fragmentation, "mean_batch": t.mean_batch,
                    "preemptions": t.preemptions, "steps": t.steps}

    _plot(trace, buddy, sweep, bs)
    write_result("phase1_rust_allocator", "bench_allocator", {
        "config": {"requests": len(lengths), "num_blocks": nb, "block_size": bs, "rate_per_step": args.rate,
                   "max_batch": args.max_batch, "reps": args.reps, "trace": "ShareGPT V3 first exchanges, SmolLM2 "
                   "tokenizer, vLLM filters; Poisson arrivals; decode = one batched call per step"},
        "trace": {"calls": len(ops), "steps": trace.steps, "preemptions": trace.preemptions,
                  "finished": trace.finished, "mean_batch": trace.mean_batch,
                  "mean_prompt_len": statistics.mean(p for p, _ in lengths),
                  "mean_output_len": statistics.mean(o for _, o in lengths)},
        "replay_identical": identical,
        "per_op_ns": per_op_ns, "replay_seconds": replay_s, "speedup_per_op": speedup,
        "per_kind": per_kind, "micro": micro_table,
        "paged": {"internal_fragmentation": trace.internal_fragmentation, "mean_batch": trace.mean_batch},
        "buddy": {"external_fragmentation_mean": buddy.mean_external_fragmentation,
                  "external_fragmentation_max": max(buddy.external_frag, default=0.0),
                  "internal_fragmentation": buddy.internal_fragmentation, "mean_batch": buddy.mean_batch,
                  "blocked_by_fragmentation": buddy.blocked_by_fragmentation, "steps": buddy.steps},
        "block_size_sweep": sweep,
    })
    return 0


def _plot(trace, buddy, sweep, bs) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    ax[0].plot(trace.batch_sizes, label=f"paged (block {bs})", lw=0.8)
    ax[0].plot(buddy.batch_sizes, label="buddy, contiguous reservation", lw=0.8)
    ax[0].set(xlabel="decode step", ylabel="running sequences", title="Same arrivals, same memory")
    ax[0].legend()
    sizes = sorted(sweep)
    ax[1].plot(sizes, [100 * sweep[b]["internal_fragmentation"] for b in sizes], "o-")
    ax[1].set(xscale="log", xlabel="block size (tokens)", ylabel="internal fragmentation (%)",
              title="Paged: waste grows with the block")
    ax[1].set_xticks(sizes, [str(b) for b in sizes])
    fig.tight_layout()
    path = results_dir("phase1_rust_allocator") / "trace.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
