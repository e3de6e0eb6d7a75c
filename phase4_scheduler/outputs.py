"""What the engine hands back after every step: one RequestOutput per request that made progress.

NOTE: an output carries both the increment (`new_token_ids`, `text_delta`: what a streaming client sends now) and the
running totals (`output_token_ids`, `text`: what an offline caller keeps), so the server, `LLM.generate` and the
tests read the same object.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    new_token_ids: list[int] = field(default_factory=list)  # since the previous output of this request
    output_token_ids: list[int] = field(default_factory=list)  # everything generated so far
    text_delta: str = ""  # new decoded text (stop strings removed; never a broken UTF-8 sequence)
    text: str = ""
    finished: bool = False
    finish_reason: str | None = None  # None | "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it, if any
    arrival_time: float = 0.0  # time.monotonic() when the request was added
    first_token_time: float | None = None  # time.monotonic() when its first token was sampled
    num_preemptions: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    def __repr__(self) -> str:
        state = f"finished={self.finish_reason}" if self.finished else "running"
        return (f"RequestOutput({self.request_id!r}, prompt={len(self.prompt_token_ids)} tok, "
                f"out={len(self.output_token_ids)} tok (+{len(self.new_token_ids)}), {state}, text={self.text!r:.60})")
