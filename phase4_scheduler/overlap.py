"""Overlapped decode: launch step N+1 on the GPU before step N's sampled tokens have reached the host.

Measured on the H100 (results/profile_decode_gpu.json): in steady decode the GPU sat idle 44-55% of every step
(B=1: 1.21 ms of kernels in a 2.3 ms profiled step; B=1024: 2.0 of 4.5 ms) while the host scheduled, built
the next inputs, waited for the sampled tokens (`.tolist()`), checked stops and built outputs. A synchronous step
cannot hide any of that: the next forward needs the tokens the host is still processing.

The fix (vLLM's async scheduling, SGLang's overlap scheduler, in their spirit): in a run of decode-only steps, the
input token of step N+1 never goes through the host. Step N's sampled tokens stay on the device; step N+1 gathers its
input ids from it on the device (`ModelRunner.execute(..., token_src=(tokens, rows))`), so the host can schedule
and launch N+1 first and only then wait for N's tokens (a non-blocking copy into pinned memory; a decode graph
whose rows are all greedy writes them there itself, graph_io.py) and process them while N+1 runs.

    call k:    schedule N+1 -> launch N+1 (inputs gathered from N's tokens on the GPU) -> wait for N -> outputs of N
    GPU:       [ ...... N ...... ][ ...... N+1 ...... ]
    host:        [prep N+1][wait]  [outputs N][prep N+2]...

What it costs: each request's token of step N is unknown on the host while N+1 is scheduled, so the engine appends
a placeholder (-1) to output_token_ids and counts it in `req.num_pending_tokens` (the tail of the list); stop
checks, outputs and aborts look only at resolved tokens. A request that finishes at step N (EOS, stop string,
max_tokens) has already been scheduled into N+1: that one extra token is computed and dropped, and its blocks are
freed while N+1 may still write into them, which is safe because every later use of those blocks is queued behind
N+1 on the same CUDA stream.

When it runs ahead (`can_run_ahead`), so that `schedule()` is guaranteed to produce the decode-only plan the
in-flight tokens can feed (sampled requests included: Sampler.sample_on_device draws on the device, each seeded
request from its own generator in step order, so its tokens are the synchronous engine's): no admission possible
(`scheduler.may_admit()`: nothing waiting, or admission held by admission batching or by a static batch still
running), every running request was in the in-flight step, the token budget covers every running request, and
there are at least as many free KV blocks as running requests (each needs at most one new block, so nothing is
preempted). Otherwise the in-flight step is drained (resolved alone) and the engine steps synchronously.

NOTE (mixed steps, `LLMEngine(overlap_mixed=...)`; on by default since 2026-12-06, TITAN_OVERLAP_MIXED=0 turns it
off). Under Poisson arrivals nearly every step admits someone or carries a prefill chunk, so decode-only run-ahead
almost never happens when serving, and the GPU waits for the host's part of every step (scheduling, inputs, outputs:
~1-2 ms at B = 512-1,024 by bench_step_overhead). The same trick covers those steps: step N+1 may admit waiting
requests and carry prompt chunks, whose input ids the host has; only the decode rows of requests that sampled in
step N need N's tokens, and those are scattered into the step's ids on the device (`token_src=(tokens, src_rows,
dst_positions)`). It runs ahead when every running request was in step N (sampled, or a prompt chunk), no unfinished
request needs host-side logits (logprobs, penalties: the engine's sync set), and the free KV blocks cover every
running request's next allocation (`blocks_needed`; admissions take only blocks left over, so nothing is preempted).
A request whose prompt ends in step N samples there like a decode row; a chunk that does not end its prompt samples
nothing (no placeholder). The CPU tests check it against the synchronous engine, the GPU tests with CUDA graphs; the
H100 measured it (p50 1.96 -> 1.51 s at 320 req/s, 512 seats), hence the default.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from phase4_scheduler.request import Request

PLACEHOLDER = -1  # an output token sampled on the device and not yet copied to the host


@dataclass
class InFlight:
    """A launched step whose sampled tokens are still on their way to the host (`rows`: the requests that sampled)."""
    rows: list[Request]  # the step's requests in batch order
    row_of: dict[str, int]  # request_id -> row: the next step gathers its input ids from `tokens` by row
    tokens: torch.Tensor  # [B] long, on the device: each row's sampled token
    host: torch.Tensor  # [B] long: the tokens' host copy (pinned on CUDA; filled by a non-blocking copy)
    done: object | None  # a torch.cuda.Event recorded after the copy (None on CPU: the copy was synchronous)
    members: frozenset  # every request id of the step, prompt chunks that sampled nothing included

    def wait_tokens(self) -> list[int]:
        if self.done is not None:
            self.done.synchronize()
        return self.host.tolist()


class TokenRing:
    """Two pinned host buffers (and events) for sampled tokens, used alternately: step N's buffer is read while
    step N+1's copy fills the other one."""

    def __init__(self, max_rows: int, device: torch.device):
        cuda = device.type == "cuda"
        self.bufs = [torch.empty(max_rows, dtype=torch.long, pin_memory=cuda) for _ in range(2)]
        self.events = [torch.cuda.Event() for _ in range(2)] if cuda else [None, None]
        self.i = 0

    def copy_out(self, tokens: torch.Tensor) -> tuple[torch.Tensor, object | None]:
        """Start copying `tokens` [B] to the host; returns (host view [B], event to wait on or None)."""
        self.i ^= 1
        host, ev = self.bufs[self.i][:tokens.shape[0]], self.events[self.i]
        host.copy_(tokens, non_blocking=ev is not None)
        if ev is not None:
            ev.record()
        return host, ev


def can_run_ahead(scheduler, prev: InFlight, mixed: bool = False) -> bool:
    """Whether the next schedule() is sure to be decode-only over requests of `prev` (see the module NOTE); with
    `mixed`, whether it is sure to preempt nothing and to need from the device only tokens of requests that sampled
    in `prev` (it may then admit and chunk prompts: the NOTE on mixed steps). The caller checks the sync set."""
    running = scheduler.running
    if not running:
        return False
    if not mixed:
        return (not scheduler.may_admit() and len(running) <= scheduler.max_num_batched_tokens
                and scheduler.kv.num_free_blocks >= len(running)
                and all(r.request_id in prev.row_of for r in running))
    if not all(r.request_id in prev.members for r in running):
        return False
    kv = scheduler.kv
    free = kv.num_free_blocks
    if free >= blocks_bound(len(running), scheduler.max_num_batched_tokens, kv.block_size):
        return True  # enough for any schedule(): no need to count
    return blocks_needed(scheduler) <= free


def blocks_bound(num_running: int, budget: int, block_size: int) -> int:
    """An O(1) upper bound of the blocks one schedule() may allocate to running requests: a request holding h
    blocks has at most h * block_size tokens, so n new ones need at most ceil(n / block_size) blocks, and the
    step's n's sum to at most the budget: sum ceil(n_i / bs) < budget / bs + the number of requests. With this
    many blocks free, can_run_ahead skips blocks_needed's pass over the batch (~0.3 ms at 650 requests on the CPU
    box)."""
    return num_running + -(-budget // block_size)


def blocks_needed(scheduler) -> int:
    """KV blocks the running requests' part of the next schedule() may allocate at most (each its missing tokens,
    capped by the step budget), so that with this many free nothing is preempted."""
    kv, budget = scheduler.kv, scheduler.max_num_batched_tokens
    return sum(kv.num_blocks_needed(r.request_id, min(r.num_missing_tokens, budget)) for r in scheduler.running)


def resolve(prev: InFlight) -> tuple[list[Request], list[int]]:
    """Wait for `prev`'s tokens and write each into its request's oldest placeholder. Returns (requests, tokens) of
    the rows whose request is still live (finished or aborted ones drop their token)."""
    ready, toks = [], []
    for req, tok in zip(prev.rows, prev.wait_tokens()):
        if req.status.is_finished:
            continue
        out = req.output_token_ids
        out[len(out) - req.num_pending_tokens] = tok
        req.num_pending_tokens -= 1
        ready.append(req)
        toks.append(tok)
    return ready, toks


def drop_pending(req: Request) -> None:
    """Forget the unresolved tail of a request that is finishing (its in-flight tokens will be ignored)."""
    if req.num_pending_tokens:
        del req.output_token_ids[-req.num_pending_tokens:]
        req.num_pending_tokens = 0
