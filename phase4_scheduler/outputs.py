"""What the engine hands back after every step: one RequestOutput per request that made progress.

NOTE: an output carries both the increment (`new_token_ids`, `text_delta`: what a streaming client sends now) and the
running totals (`output_token_ids`, `text`: what an offline caller keeps), so the server, `LLM.generate` and the
tests read the same object.

NOTE (shared totals): a front end that keeps a request's running token list itself (process_engine.py) builds its
outputs with `RequestOutput.sharing(..., totals, n, ...)`: the output holds that list and a length instead of a copy,
and `output_token_ids` becomes `totals[:n]` on first read (then it is an ordinary attribute). The list must only
grow (appends), so the snapshot is the same whenever it is taken; a streaming server that reads only
`num_output_tokens` never copies. Copying the whole list per stream per step was O(output length): +3.3 us per
stream per step at 400 tokens on the CPU box (SERVER.md).
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
    # (+ new_logprobs, logprobs, prompt_logprobs: see the class attributes after the class)

    @classmethod
    def sharing(cls, request_id: str, prompt_token_ids: list[int], new_token_ids: list[int], totals: list[int],
                n: int, text_delta: str, text: str, finished: bool, finish_reason: str | None,
                stop_reason: int | str | None, arrival_time: float, first_token_time: float | None,
                num_preemptions: int, new_logprobs: list | None = None,
                logprobs: list | None = None, prompt_logprobs: list | None = None) -> "RequestOutput":
        """An output whose output_token_ids is `totals[:n]`, copied only when read (the module NOTE)."""
        out = cls.__new__(cls)
        out.__dict__.update(request_id=request_id, prompt_token_ids=prompt_token_ids, new_token_ids=new_token_ids,
                            text_delta=text_delta, text=text, finished=finished, finish_reason=finish_reason,
                            stop_reason=stop_reason, arrival_time=arrival_time, first_token_time=first_token_time,
                            num_preemptions=num_preemptions, _totals=(totals, n))
        if new_logprobs is not None or logprobs is not None or prompt_logprobs is not None:
            out.new_logprobs, out.logprobs, out.prompt_logprobs = new_logprobs, logprobs, prompt_logprobs
        return out

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        ids = self.__dict__.get("output_token_ids")
        return len(ids) if ids is not None else self.__dict__["_totals"][1]

    def __repr__(self) -> str:
        state = f"finished={self.finish_reason}" if self.finished else "running"
        return (f"RequestOutput({self.request_id!r}, prompt={len(self.prompt_token_ids)} tok, "
                f"out={self.num_output_tokens} tok (+{len(self.new_token_ids)}), {state}, text={self.text!r:.60})")


class _SharedTotals:
    """`output_token_ids` of an output made by `RequestOutput.sharing`: `totals[:n]`, stored on first read (a
    non-data descriptor: an output built by __init__ has the attribute in its __dict__ and never gets here)."""

    def __get__(self, out, owner=None):
        if out is None:
            raise AttributeError("output_token_ids")  # as before: no class attribute (a default_factory field)
        try:
            totals, n = out.__dict__.pop("_totals")
        except KeyError:
            raise AttributeError(f"{owner.__name__!r} object has no attribute 'output_token_ids'") from None
        ids = out.__dict__["output_token_ids"] = totals[:n]
        return ids


RequestOutput.output_token_ids = _SharedTotals()  # after @dataclass: __init__ keeps its default_factory

# Log-probabilities, set on an output only when its request asked for them (SamplingParams.logprobs /
# prompt_logprobs); class attributes, not dataclass fields, so that the common output costs nothing more to build
# (LLMEngine._output runs per request per step). Each entry: (token id, logprob, ((id, logprob), ...) the top
# alternatives); prompt_logprobs (once the whole prompt is scored) starts with the first prompt token, logprob None.
RequestOutput.new_logprobs = None  # for new_token_ids
RequestOutput.logprobs = None  # for output_token_ids
RequestOutput.prompt_logprobs = None  # for prompt_token_ids
