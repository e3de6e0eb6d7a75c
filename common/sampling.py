"""Sampling: greedy, temperature, top-k, top-p (nucleus), seeded. The Sampler of every later engine calls this."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch


MAX_LOGPROBS = 20  # top alternatives per token, at most (OpenAI's chat API allows 20)
# Temperatures below this are greedy (vLLM's _SAMPLING_EPS): logits / 1e-40 overflow fp32 to inf, and a softmax of
# inf is NaN, which made torch.multinomial raise inside a step and took every request of the batch down with it.
GREEDY_TEMPERATURE = 1e-5
SEED_RANGE = (-(2 ** 63), 2 ** 64)  # what torch.Generator.manual_seed accepts (beyond: an error inside the step)


@dataclass
class SamplingParams:
    """What to generate: temperature 0 is greedy; top_k 0 (or -1) and top_p 1.0 disable those filters."""
    max_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    # log-probabilities of each sampled token under the model (its raw distribution: before temperature / top-k /
    # top-p), plus that many top alternatives; None: none (phase 4's engine computes them; 0 = the sampled token's)
    logprobs: int | None = None
    # the same for every prompt token after the first (its log-probability given the tokens before it): what
    # evaluation harnesses score (e.g. lm-eval's loglikelihood over /v1/completions with echo)
    prompt_logprobs: int | None = None
    # logits processors (phase 4's sampler applies them; they change what is sampled, greedy included):
    presence_penalty: float = 0.0  # OpenAI: minus this from every token already generated
    frequency_penalty: float = 0.0  # OpenAI: minus this times how often the token was generated
    repetition_penalty: float = 1.0  # CTRL / HF / vLLM: tokens of prompt or output: logit / p if > 0, else * p
    logit_bias: dict[int, float] | None = None  # OpenAI: token id -> added to its logit (-100 bans, +100 forces)

    def __post_init__(self) -> None:
        """Values are checked here, where a bad one names itself: one that got into a step would raise there
        (torch.multinomial on NaN, topk(k=True)) and end every request of the batch. (The seed, stop strings and
        stop token ids are checked by the engine's validate: phase4_scheduler.sampler.validate_params.)

        NOTE: a temperature below GREEDY_TEMPERATURE is stored as 0.0 (greedy): sampling at 1e-6 is argmax
        anyway, and dividing logits by 1e-40 overflows fp32."""
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        for name in ("temperature", "top_p"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature < GREEDY_TEMPERATURE:
            self.temperature = 0.0
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < -1:
            raise ValueError(f"top_k must be an integer >= -1 (0 or -1 disable it), got {self.top_k!r}")
        if isinstance(self.stop, str):  # one stop string, as OpenAI's API takes it (a str is no list of them: it
            self.stop = [self.stop]  # stopped at each of its characters)
        for name in ("logprobs", "prompt_logprobs"):
            lp = getattr(self, name)
            if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= MAX_LOGPROBS):
                raise ValueError(f"{name} must be an integer in [0, {MAX_LOGPROBS}] (top alternatives per token) or "
                                 f"None, got {lp!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise ValueError(f"repetition_penalty must be a finite number > 0 (1 = off), got {self.repetition_penalty}")
        for t, b in (self.logit_bias or {}).items():
            if isinstance(t, bool) or not isinstance(t, int) or t < 0 or not -100.0 <= b <= 100.0:
                raise ValueError(f"logit_bias maps token ids (integers >= 0) to biases in [-100, 100], got "
                                 f"{t!r}: {b!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def processes_logits(self) -> bool:
        """True when a penalty or a logit bias changes the logits before sampling."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
                    or self.logit_bias)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus to -inf. logits: [B, V] (already divided by the temperature)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p; the top token always stays, explicitly:
        # a top_p below fp32's smallest number (1e-300 passes "0 < top_p") compares as 0 >= 0 and dropped it too,
        # leaving a row of -inf whose softmax is NaN (torch.multinomial then raised inside the step)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> next token ids [B]."""
    if params.greedy:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / params.temperature, params.top_k, params.top_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def make_generator(params: SamplingParams, device: torch.device | str = "cpu") -> torch.Generator | None:
    if params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(params.seed)


def check_prompt_fits(prompt_len: int, max_tokens: int, max_model_len: int) -> None:
    """Raise PromptTooLongError when the prompt (plus the tokens asked for) does not fit the context window."""
    from common.errors import PromptTooLongError

    if prompt_len >= max_model_len:
        raise PromptTooLongError(
            f"the prompt has {prompt_len} tokens but the model's context is {max_model_len} tokens: shorten the "
            "prompt (or raise --max-model-len if the model supports a longer context).")
    if prompt_len + max_tokens > max_model_len:
        raise PromptTooLongError(
            f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) = {prompt_len + max_tokens} exceeds the "
            f"context of {max_model_len} tokens: ask for at most {max_model_len - prompt_len} new tokens.")
