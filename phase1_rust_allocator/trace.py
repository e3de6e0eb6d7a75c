"""A continuous-batching trace over a block manager, built from request lengths (ShareGPT in the benchmark).

`simulate_paged` plays a small scheduler against a BlockTableManager (either implementation): requests arrive as a
Poisson process, are admitted while there are blocks and batch slots (prefill = append the whole prompt), every
running sequence then gains one token per step in ONE batched call (decode), finished sequences are freed, and when
a step runs out of blocks the newest sequence is preempted (freed and re-queued, as vLLM's recompute preemption).
It records every manager call, so the identical call sequence can be replayed through both implementations for
timing, and it samples internal fragmentation every step.

`simulate_buddy` plays the same arrivals against a BuddyAllocator that reserves each request's final length as
one contiguous run, the way a contiguous KV cache must, and samples external fragmentation.

NOTE (definitions): internal fragmentation = allocated-but-unused token slots / allocated token slots (slots =
blocks x block_size, summed over blocks in use). External fragmentation = 1 - largest free run / free blocks.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from phase1_rust_allocator.errors import OutOfBlocksError


@dataclass
class TraceResult:
    ops: list = field(default_factory=list)         # [(method name, args tuple)] in call order
    steps: int = 0
    preemptions: int = 0
    finished: int = 0
    frag_samples: list = field(default_factory=list)  # (unused slots, allocated slots) per step
    batch_sizes: list = field(default_factory=list)   # running sequences per step
    blocks_in_use: list = field(default_factory=list)

    @property
    def internal_fragmentation(self) -> float:
        """Over the whole trace: sum of unused slots / sum of allocated slots (a time average weighted by memory)."""
        unused = sum(u for u, _ in self.frag_samples)
        alloc = sum(a for _, a in self.frag_samples)
        return unused / alloc if alloc else 0.0

    @property
    def mean_batch(self) -> float:
        return sum(self.batch_sizes) / max(1, len(self.batch_sizes))


def arrival_steps(n: int, rate: float, seed: int = 0) -> list[int]:
    """Poisson arrivals: the decode step at which each of n requests arrives (rate requests per step)."""
    rng, t, out = random.Random(seed), 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(int(t))
    return out


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def simulate_paged(manager, lengths, rate: float = 2.0, max_batch: int = 128, seed: int = 0) -> TraceResult:
    """Drive `manager` (a fresh BlockTableManager) through the trace; returns the recorded calls and statistics."""
    res, bs = TraceResult(), manager.block_size
    arrivals = arrival_steps(len(lengths), rate, seed)
    waiting: list[int] = []   # request ids, FIFO (preempted ones go back to the front)
    running: list[int] = []   # admission order
    ntok = {}                 # request id -> tokens in the cache
    nxt = 0

    def call(name, *args):
        res.ops.append((name, args))
        return getattr(manager, name)(*args)

    while nxt < len(lengths) or waiting or running:
        while nxt < len(lengths) and arrivals[nxt] <= res.steps:
            waiting.append(nxt)
            nxt += 1
        while waiting and len(running) < max_batch:  # admit: prefill the whole prompt (+1 slot for its first token)
            r = waiting[0]  # ...keeping one free block per running sequence in reserve, so decode rarely preempts
            if manager.num_free_blocks < _ceil_div(lengths[r][0] + 1, bs) + len(running):
                break
            waiting.pop(0)
            call("add_sequence", r)
            call("append_tokens", r, lengths[r][0])
            running.append(r)
            ntok[r] = lengths[r][0]
        if running:  # decode: every running sequence gains one token, in one batched call
            while True:
                try:
                    call("append_tokens_batch", list(running), [1] * len(running))
                    break
                except OutOfBlocksError:
                    victim = running.pop()  # preempt the newest; it restarts from its prompt later
                    call("free_sequence", victim)
                    waiting.insert(0, victim)
                    res.preemptions += 1
            for r in running:
                ntok[r] += 1
            done = [r for r in running if ntok[r] >= sum(lengths[r])]
            for r in done:
                call("free_sequence", r)
                running.remove(r)
                res.finished += 1
        used = manager.num_total_blocks - manager.num_free_blocks
        tokens = sum(ntok[r] for r in running)
        if used:
            res.frag_samples.append((used * bs - tokens, used * bs))
        res.batch_sizes.append(len(running))
        res.blocks_in_use.append(used)
        res.steps += 1
    return res


@dataclass
class BuddyResult:
    steps: int = 0
    external_frag: list = field(default_factory=list)  # per step with free blocks
    internal: list = field(default_factory=list)       # (unused slots, reserved slots) per step
    batch_sizes: list = field(default_factory=list)
    blocked_by_fragmentation: int = 0  # admissions refused although enough blocks were free in total

    @property
    def mean_external_fragmentation(self) -> float:
        return sum(self.external_frag) / max(1, len(self.external_frag))

    @property
    def internal_fragmentation(self) -> float:
        alloc = sum(a for _, a in self.internal)
        return sum(u for u, _ in self.internal) / alloc if alloc else 0.0

    @property
    def mean_batch(self) -> float:
        return sum(self.batch_sizes) / max(1, len(self.batch_sizes))


def simulate_buddy(buddy, lengths, block_size: int = 16, rate: float = 2.0, max_batch: int = 128,
                   seed: int = 0, on_step=None) -> BuddyResult:
    """The same arrivals against a buddy allocator that reserves prompt + output tokens contiguously on admission
    (it is even told the output length in advance, which a real server is not). `on_step(step, buddy)`, if given,
    is called after every step (the notebook takes snapshots with it)."""
    res = BuddyResult()
    arrivals = arrival_steps(len(lengths), rate, seed)
    waiting, running, nxt = [], {}, 0  # running: request id -> (start, tokens so far)
    while nxt < len(lengths) or waiting or running:
        while nxt < len(lengths) and arrivals[nxt] <= res.steps:
            waiting.append(nxt)
            nxt += 1
        while waiting and len(running) < max_batch:
            r = waiting[0]
            need = _ceil_div(sum(lengths[r]), block_size)
            if not buddy.can_allocate(need):
                res.blocked_by_fragmentation += buddy.num_free_blocks >= need
                break
            waiting.pop(0)
            running[r] = [buddy.allocate(need), lengths[r][0]]
        for r in list(running):
            running[r][1] += 1
            if running[r][1] >= sum(lengths[r]):
                buddy.free(running.pop(r)[0])
        if buddy.num_free_blocks:
            res.external_frag.append(buddy.external_fragmentation())
        reserved = sum(buddy.allocation_size(s) for s, _ in running.values()) * block_size
        if reserved:
            res.internal.append((reserved - sum(t for _, t in running.values()), reserved))
        res.batch_sizes.append(len(running))
        if on_step:
            on_step(res.steps, buddy)
        res.steps += 1
    return res
