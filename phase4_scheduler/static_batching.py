"""The static-batching baseline: fixed batches, each run until its LAST request finishes, before the next starts.

This is how `model.generate(batch)` serves (HF transformers, early servers): a batch is formed, its prompts are
prefilled whole, and it decodes until every member is done; requests that arrive meanwhile wait, and seats freed by
early finishers stay empty. Continuous batching refills those seats every step.

NOTE: the baseline reuses the whole engine and changes only the admission rule (`StaticScheduler._admit_more`), so a
comparison measures the scheduling policy alone. It is kind to static batching: finished members stop computing (a
padded implementation keeps burning their slots) and prompts are not padded to the longest.
"""
from __future__ import annotations

from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.llm import LLM
from phase4_scheduler.scheduler import Scheduler, SchedulerOutput


class StaticScheduler(Scheduler):
    """Admit a new batch of up to max_num_seqs requests only when no request is running; no chunked prefill."""

    def __init__(self, kv, max_num_seqs: int = 64, max_num_batched_tokens: int = 512,
                 enable_chunked_prefill: bool = False, **admission):
        super().__init__(kv, max_num_seqs, max_num_batched_tokens, enable_chunked_prefill=False, **admission)
        self._forming = False  # True only in a step that began with nothing running: the one that forms a batch

    def _admit_more(self, out: SchedulerOutput) -> bool:
        return self._forming and not out.preempted

    def may_admit(self) -> bool:
        return bool(self.waiting) and not self.running  # a batch forms only when nothing runs

    def schedule(self) -> SchedulerOutput:
        self._forming = not self.running
        try:
            return super().schedule()
        finally:
            self._forming = False


def static_engine(loaded, batch_size: int, **kwargs) -> LLMEngine:
    """An LLMEngine that serves in static batches of `batch_size`."""
    kwargs.setdefault("max_num_batched_tokens", 1 << 20)  # a whole batch's prompts in one step
    return LLMEngine(loaded, max_num_seqs=batch_size, scheduler_cls=StaticScheduler, **kwargs)


def static_llm(loaded, batch_size: int, **kwargs) -> LLM:
    """The offline API over static batching (for side-by-side runs with LLM)."""
    return LLM(engine=static_engine(loaded, batch_size, **kwargs))
