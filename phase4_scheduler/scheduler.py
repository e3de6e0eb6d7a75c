"""The iteration-level scheduler: continuous batching under a token budget, chunked prefill, preemption.

Every step it decides, for each request, how many of its missing tokens run through the model:

    budget = max_num_batched_tokens
    1. running requests, oldest first (decodes take 1 token; a chunked prefill takes what is left of its prompt);
       when KV blocks run out, preempt the NEWEST running request (free its blocks, recompute it later) and retry
    2. then waiting requests, strictly first come first served, while budget, seats (max_num_seqs) and blocks last;
       a prompt longer than the remaining budget is cut into chunks (chunked prefill)

NOTE (admission batching): on a GPU, decode-only steps replay a CUDA graph, but a step that carries any prefill runs
eagerly and is launch-bound (measured on the H100: ShareGPT with a new request admitted nearly every step ran at
8.2 ms/step, decode-only steps at ~3.4). With `admit_min_free_seats=k`, a busy batch (nothing admitted unless at
least k seats are free) collects its finished seats and refills them in one prefill step, as TGI's
waiting_served_ratio / max_waiting_tokens do; `max_admit_delay_steps` bounds the extra wait of the queue head, and a
batch with k or more free seats (light load) admits at once, so TTFT only grows under saturation.

NOTE (why no starvation): preempted requests go back to the FRONT of the waiting queue in their arrival order, and
the waiting queue is served strictly in order (the head blocks everything behind it), so a long request cannot be
overtaken forever by short ones; and no waiting request is admitted in a step that had to preempt, so a request is
never admitted just to evict an older one.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from phase4_scheduler.kv_manager import KVCacheManager
from phase4_scheduler.request import Request, RequestStatus


@dataclass
class SchedulerOutput:
    """One step's plan: (request, number of tokens to compute) in batch order, plus who was preempted."""
    scheduled: list[tuple[Request, int]] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    num_batched_tokens: int = 0  # sum of the n's (kept by `add`, so the engine can tell a decode-only step in O(1))

    def add(self, req: Request, n: int) -> None:
        self.scheduled.append((req, n))
        self.num_batched_tokens += n

    @property
    def decode_only(self) -> bool:
        """Every scheduled request computes exactly one token (n >= 1 each, so the sum tells)."""
        return self.num_batched_tokens == len(self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    def __repr__(self) -> str:
        items = ", ".join(f"{r.request_id}:{n}" for r, n in self.scheduled)
        return f"SchedulerOutput([{items}], tokens={self.num_batched_tokens}, preempted={len(self.preempted)})"


class Scheduler:
    def __init__(self, kv: KVCacheManager, max_num_seqs: int = 64, max_num_batched_tokens: int = 512,
                 enable_chunked_prefill: bool = True, admit_min_free_seats: int = 1, max_admit_delay_steps: int = 16):
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError(f"max_num_seqs and max_num_batched_tokens must be >= 1, got {max_num_seqs}, "
                             f"{max_num_batched_tokens}")
        if not 1 <= admit_min_free_seats <= max_num_seqs or max_admit_delay_steps < 0:
            raise ValueError(f"admit_min_free_seats must be in 1..max_num_seqs={max_num_seqs} and "
                             f"max_admit_delay_steps >= 0, got {admit_min_free_seats}, {max_admit_delay_steps}")
        self.admit_min_free_seats = admit_min_free_seats
        self.max_admit_delay_steps = max_admit_delay_steps
        self.held_steps = 0  # consecutive steps the queue head waited only because of admission batching
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order: the last one is the newest (first to preempt)
        self.num_preemptions = 0

    def add(self, req: Request) -> None:
        req.status = RequestStatus.WAITING
        self.waiting.append(req)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def _preempt(self, req: Request) -> None:
        self.kv.free(req.request_id)
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def _admit_more(self, out: SchedulerOutput) -> bool:
        """Whether step 2 may admit waiting requests (the static-batching baseline overrides this)."""
        return not out.preempted

    def _admission_open(self) -> bool:
        """Decided once per step, before admitting: enough free seats, nothing running, or the head waited long."""
        if not self.waiting:
            return False
        free = self.max_num_seqs - len(self.running)
        if free >= self.admit_min_free_seats or not self.running or self.held_steps >= self.max_admit_delay_steps:
            self.held_steps = 0
            return True
        if free > 0:
            self.held_steps += 1
        return False

    def may_admit(self) -> bool:
        """Whether the next schedule() could admit a waiting request (conservative, no side effects): overlapped
        decode runs ahead only when it cannot (overlap.can_run_ahead)."""
        if not self.waiting:
            return False
        free = self.max_num_seqs - len(self.running)
        return free >= self.admit_min_free_seats or not self.running or self.held_steps >= self.max_admit_delay_steps

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        running, try_allocate, scheduled = self.running, self.kv.try_allocate, out.scheduled
        i = 0
        while i < len(running) and budget > 0:  # once per running request per step: the engine's hottest loop
            req = running[i]
            n = len(req.prompt_token_ids) + len(req.output_token_ids) - req.num_computed_tokens  # num_missing_tokens
            if n > budget:
                n = budget
            while not try_allocate(req.request_id, n):
                victim = running.pop()  # the newest running request
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is req:
                    break
            else:
                scheduled.append((req, n))  # out.add, its token count kept below
                budget -= n
                i += 1
        out.num_batched_tokens = self.max_num_batched_tokens - budget
        # preempted requests sit at the front of `waiting`, oldest first (each appendleft put a newer one behind)
        if not self._admission_open():
            return out
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and self._admit_more(out):
            req = self.waiting[0]
            n = min(req.num_missing_tokens, budget)
            if n < req.num_missing_tokens and not self.enable_chunked_prefill:
                break
            if not self.kv.try_allocate(req.request_id, n):
                break  # FCFS: the head of the queue waits for blocks, nobody overtakes it
            self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            out.add(req, n)
            budget -= n
        return out

    def finish(self, req: Request, status: RequestStatus) -> None:
        """Take a request out (finished or aborted) and free its blocks."""
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self.kv.free(req.request_id)
        req.status = status

    def finish_running(self, finished: list[tuple[Request, RequestStatus]]) -> None:
        """finish() for many running requests at once: one pass over `running` instead of a list.remove each (a
        step where 1024 requests end together would otherwise cost ~1M comparisons)."""
        if not finished:
            return
        for req, status in finished:
            self.kv.free(req.request_id)
            req.status = status
        gone = {id(r) for r, _ in finished}
        self.running = [r for r in self.running if id(r) not in gone]

    def __repr__(self) -> str:
        return (f"Scheduler(running={len(self.running)}, waiting={len(self.waiting)}, max_num_seqs={self.max_num_seqs}, "
                f"token_budget={self.max_num_batched_tokens}, chunked_prefill={self.enable_chunked_prefill}, "
                f"preemptions={self.num_preemptions}, {self.kv})")
