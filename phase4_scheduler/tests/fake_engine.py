"""A tiny stand-in for AsyncEngine with the same interface, for fast server tests of the error and abort paths.

Byte-level tokenizer (ids 0..255 are bytes, 256 is EOS); the "model" writes the alphabet from where the prompt
ends; KV blocks are reserved for prompt + max_tokens on admission (FCFS: a request waits until they are free)
and returned when the request finishes or is aborted, so a leak shows up in stats().
"""
from __future__ import annotations

import asyncio
import math
import time

from common.errors import PromptTooLongError
from common.sampling import SamplingParams, check_prompt_fits
from phase4_scheduler.outputs import RequestOutput

EOS = 256


class ByteTokenizer:
    vocab_size = 257
    eos_token_id = EOS

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def chat_ids(self, messages, add_generation_prompt: bool = True) -> list[int]:
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return self.encode(text + ("<assistant>" if add_generation_prompt else ""))

    def stop_token_ids(self) -> list[int]:
        return [EOS]


def expected_text(num_prompt: int, num_tokens: int) -> str:
    """What FakeEngine generates after a prompt of num_prompt tokens (without stops)."""
    return "".join(chr(ord("a") + (num_prompt + i) % 26) for i in range(num_tokens))


class FakeEngine:
    model_name = "fake-model"

    def __init__(self, max_model_len: int = 256, num_blocks: int = 512, block_size: int = 4,
                 step_s: float = 0.002, eos_after: int | None = None):
        self.tokenizer = ByteTokenizer()
        self.max_model_len, self.block_size, self.step_s, self.eos_after = max_model_len, block_size, step_s, eos_after
        self.num_total_blocks = self.num_free_blocks = num_blocks
        self.running: set[str] = set()
        self.waiting: list[str] = []
        self.aborted: set[str] = set()
        self.counters = {"num_finished": 0, "num_aborted": 0, "max_waiting": 0}
        self.abort_calls: list[str] = []
        self.started = self.shut_down = 0

    async def start(self) -> None:
        self.started += 1

    async def shutdown(self) -> None:
        self.shut_down += 1

    def stats(self) -> dict:
        return {"num_running": len(self.running), "num_waiting": len(self.waiting),
                "kv_usage": 1 - self.num_free_blocks / self.num_total_blocks, "num_free_blocks": self.num_free_blocks,
                "num_total_blocks": self.num_total_blocks, "counters": dict(self.counters)}

    async def abort(self, request_id: str) -> None:
        self.abort_calls.append(request_id)
        if request_id in self.running or request_id in self.waiting:
            self.aborted.add(request_id)
            self.counters["num_aborted"] += 1

    def _admissible(self, request_id: str, need: int) -> bool:
        return self.waiting[0] == request_id and self.num_free_blocks >= need

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        check_prompt_fits(len(prompt_token_ids), params.max_tokens, self.max_model_len)
        if math.ceil((len(prompt_token_ids) + params.max_tokens) / self.block_size) > self.num_total_blocks:
            raise PromptTooLongError("prompt + max_tokens needs more KV blocks than the pool has: give more memory")

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str):
        self.validate(prompt_token_ids, params)
        need = math.ceil((len(prompt_token_ids) + params.max_tokens) / self.block_size)
        held = 0
        self.waiting.append(request_id)
        self.counters["max_waiting"] = max(self.counters["max_waiting"], len(self.waiting))
        try:  # NOTE: the cleanup in `finally` never awaits, so it also completes under cancellation
            while request_id not in self.aborted and not self._admissible(request_id, need):
                await asyncio.sleep(0.001)  # FCFS admission by polling: simple, and plenty for tests
            self.waiting.remove(request_id)
            if request_id not in self.aborted:
                self.num_free_blocks -= need
                held = need
                self.running.add(request_id)
            out = RequestOutput(request_id, list(prompt_token_ids), arrival_time=time.monotonic())
            stops = params.stop_token_ids if not params.ignore_eos else [t for t in params.stop_token_ids if t != EOS]
            while request_id not in self.aborted:
                await asyncio.sleep(self.step_s)
                i = len(out.output_token_ids)
                tok = EOS if self.eos_after is not None and i == self.eos_after and not params.ignore_eos \
                    else ord("a") + (len(prompt_token_ids) + i) % 26
                out = RequestOutput(request_id, out.prompt_token_ids, [tok], out.output_token_ids + [tok],
                                    text=out.text, arrival_time=out.arrival_time)
                if tok in stops:
                    out.finished, out.finish_reason, out.stop_reason = True, "stop", tok
                else:
                    new_text = out.text + self.tokenizer.decode([tok])
                    hit = next((s for s in params.stop if s in new_text), None)
                    if hit is not None:
                        new_text = new_text[:new_text.index(hit)]
                        out.finished, out.finish_reason, out.stop_reason = True, "stop", hit
                    elif len(out.output_token_ids) >= params.max_tokens:
                        out.finished, out.finish_reason = True, "length"
                    out.text_delta, out.text = new_text[len(out.text):], new_text
                yield out
                if out.finished:
                    self.counters["num_finished"] += 1
                    return
            yield RequestOutput(request_id, out.prompt_token_ids, [], out.output_token_ids, text=out.text,
                                finished=True, finish_reason="abort")
        finally:
            if request_id in self.waiting:
                self.waiting.remove(request_id)
            self.running.discard(request_id)
            self.aborted.discard(request_id)
            self.num_free_blocks += held
