"""Padded static batching: HF `generate`'s cost model. A batch's seats all keep computing until its LONGEST member
finishes, so a request that wanted 20 tokens burns its seat for the 900 tokens of its longest neighbour.

static_batching.StaticScheduler is the kind baseline (finished members stop computing). This one differs only at
batch formation: every member's max_tokens is raised to the batch's longest, so the engine keeps decoding the
finished members' seats (attention over their growing context included). The member's own answer is complete when
its own (real) max_tokens were sampled: the scheduler notes that moment in `real_finish`, which a benchmark reads as
the request's finish time (a streamed answer; `generate()` returning the whole batch at the end is slower still).

NOTE: prompts are not padded to the batch's longest (HF left-pads them): padded prompts would push padded seats past
the model's context on ShareGPT's long-prompt / long-answer mixes, and prefill is a small share of the work; so
this baseline is still slightly kind. A seat whose padding would cross max_model_len stops there (check_stop), after
its real tokens, which validate() guaranteed fit.
"""
from __future__ import annotations

import dataclasses
import time

from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.static_batching import StaticScheduler


class PaddedStaticScheduler(StaticScheduler):
    """Static batches whose members all decode until the batch's longest member is done."""

    def __init__(self, kv, max_num_seqs: int = 64, max_num_batched_tokens: int = 512,
                 enable_chunked_prefill: bool = False, clock=time.monotonic, **admission):
        super().__init__(kv, max_num_seqs, max_num_batched_tokens, **admission)
        self.clock = clock
        self.real_len: dict[str, int] = {}  # request id -> the max_tokens it asked for (before padding)
        self.real_finish: dict[str, float] = {}  # request id -> clock() when its real last token was sampled
        self.num_padded_tokens = 0  # decode tokens computed for members already done (the waste)

    def _note_real_finishes(self, reqs) -> None:
        now = self.clock()
        for r in reqs:
            real = self.real_len.get(r.request_id)
            if real is None:
                continue
            done = len(r.output_token_ids)
            if done >= real and r.request_id not in self.real_finish:
                self.real_finish[r.request_id] = now

    def schedule(self):
        self._note_real_finishes(self.running)  # tokens sampled by the previous step
        forming = not self.running
        out = super().schedule()
        if forming and self.running:
            for r in self.running:
                self.real_len.setdefault(r.request_id, r.params.max_tokens)
            longest = max(self.real_len[r.request_id] for r in self.running)
            for r in self.running:
                if r.params.max_tokens != longest:
                    r.params = dataclasses.replace(r.params, max_tokens=longest)
        return out

    def finish_running(self, finished) -> None:
        self._note_real_finishes([r for r, _ in finished])
        for r, _ in finished:
            real = self.real_len.get(r.request_id)
            if real is not None:
                self.num_padded_tokens += max(0, len(r.output_token_ids) - real)
        super().finish_running(finished)

    def pop_real_finish(self, request_id: str) -> float | None:
        """The time request_id's own answer was complete (None if unknown); forgets the request."""
        self.real_len.pop(request_id, None)
        return self.real_finish.pop(request_id, None)

    def __repr__(self) -> str:
        return (f"PaddedStaticScheduler(running={len(self.running)}, waiting={len(self.waiting)}, "
                f"max_num_seqs={self.max_num_seqs}, padded_tokens={self.num_padded_tokens}, {self.kv})")


def padded_static_engine(loaded, batch_size: int, **kwargs) -> LLMEngine:
    """An LLMEngine that serves in padded static batches of `batch_size` (HF generate's compute)."""
    kwargs.setdefault("max_num_batched_tokens", 1 << 20)  # a whole batch's prompts in one step
    return LLMEngine(loaded, max_num_seqs=batch_size, scheduler_cls=PaddedStaticScheduler, **kwargs)
