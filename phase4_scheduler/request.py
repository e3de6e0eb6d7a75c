"""A request's life inside the engine: WAITING -> RUNNING -> (PREEMPTED -> WAITING ->) FINISHED_*.

NOTE (vLLM v1's bookkeeping): a request is just its token list (prompt + outputs) and `num_computed_tokens`, how
many of those tokens already have K/V in the cache. Prefill, chunked prefill, decode and recompute after preemption
are then one rule: each step the scheduler gives a request some of its `num_tokens - num_computed_tokens` missing
tokens; when it has none missing after the step, the model's last logits sample its next token.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from common.sampling import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"  # blocks freed; back at the front of the waiting queue, to be recomputed
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    __hash__ = object.__hash__  # members are singletons: hash by identity in C (Enum's own hash is Python code, paid
    # per request per step by `status in _FINISHED`)

    @property
    def is_finished(self) -> bool:
        return self in _FINISHED

    @property
    def finish_reason(self) -> str | None:
        return self.value if self in _FINISHED else None


_FINISHED = frozenset((RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED))


@dataclass(eq=False, slots=True)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    num_preemptions: int = 0
    first_token_time: float | None = None
    stop_reason: int | str | None = None
    generator: torch.Generator | None = None  # per-request RNG when params.seed is set
    detokenizer: object | None = None  # an IncrementalDetokenizer when the engine has a tokenizer
    num_returned_tokens: int = 0  # how many output tokens earlier RequestOutputs already carried
    num_pending_tokens: int = 0  # placeholders at the tail of output_token_ids still on the device (overlap.py)
    logprobs: list | None = None  # with params.logprobs: one (token, logprob, top alternatives) per output token
    prompt_logprobs: list | None = None  # with params.prompt_logprobs: the same per prompt token (the first: None)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_at(self, i: int) -> int:
        """all_token_ids[i] without building the concatenation (the engine asks once per request per step)."""
        p = len(self.prompt_token_ids)
        return self.prompt_token_ids[i] if i < p else self.output_token_ids[i - p]

    def token_slice(self, start: int, stop: int) -> list[int]:
        """all_token_ids[start:stop] (concatenates only when the slice straddles prompt and outputs)."""
        p = len(self.prompt_token_ids)
        if stop <= p:
            return self.prompt_token_ids[start:stop]
        if start >= p:
            return self.output_token_ids[start - p:stop - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[:stop - p]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_output_tokens(self) -> int:
        """Output tokens known on the host (the in-flight placeholders of overlapped decode excluded)."""
        return len(self.output_token_ids) - self.num_pending_tokens

    @property
    def num_missing_tokens(self) -> int:
        """Tokens still to run through the model before the next sample (whole prompt on arrival, 1 in decode)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, {self.status.name}, prompt={len(self.prompt_token_ids)}, "
                f"out={len(self.output_token_ids)}/{self.params.max_tokens}, computed={self.num_computed_tokens})")
