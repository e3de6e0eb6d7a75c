"""The Sampler: one next token per request from the batch's logits, each with its own sampling parameters.

NOTE: greedy rows (temperature 0, the common case in benchmarks) are one batched argmax and one `.tolist()` (the
step's only device->host copy: B ints); an all-greedy batch does nothing else. `sample_on_device` stops before the
copy (overlapped decode keeps the tokens on the GPU to feed the next step). Unseeded sampled rows are grouped by
identical (temperature, top_k, top_p) and each group is one batched common.sampling.sample call; seeded rows go one
by one with the request's own generator, so a seeded request draws the same tokens whatever else shares its batch
(its generator is created once and advanced only by its own samples).
"""
from __future__ import annotations

import torch

from common.sampling import SEED_RANGE, SamplingParams, make_generator, sample
from phase4_scheduler.argmax import greedy_argmax
from phase4_scheduler.request import Request, RequestStatus
from phase4_scheduler.step_inputs import int64_tensor


def validate_params(params: SamplingParams) -> None:
    """Errors SamplingParams' own checks do not catch (clear messages; the server turns them into 400s)."""
    if not isinstance(params, SamplingParams):
        raise TypeError(f"sampling params must be a common.sampling.SamplingParams, got {type(params).__name__}")
    seed = params.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not SEED_RANGE[0] <= seed < SEED_RANGE[1]):  # (manual_seed would raise mid-step)
        raise ValueError(f"seed must be an integer in [-2**63, 2**64) or None, got {seed!r}")
    ids = params.stop_token_ids
    if not isinstance(ids, (list, tuple, set, frozenset)) or any(
            isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in ids):
        raise ValueError(f"stop_token_ids must be non-negative integers (a list of them), got {ids!r}")
    if not isinstance(params.stop, (list, tuple)) or any(not isinstance(s, str) or not s for s in params.stop):
        raise ValueError(f"stop strings must be non-empty strings, got {params.stop!r}")


PROCESSED_LOGIT_MAX = 1e30  # / the smallest sampled temperature (1e-5) stays below fp32's 3.4e38


def process_logits(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    """The logits with each request's penalties and logit bias applied (SamplingParams.processes_logits), as a new
    fp32 tensor; `logits` itself is left as it is (logprobs are reported from it: the model's raw distribution).

    NOTE (semantics, in this order): repetition_penalty over every token of prompt and output (a positive logit is
    divided by it, a negative one multiplied: CTRL / HF / vLLM); frequency_penalty x count + presence_penalty
    subtracted for every token already generated (OpenAI's formula, over the output only); logit_bias added. The
    history is read on the host: the engine keeps such requests' steps synchronous (no placeholders in flight)."""
    rows = [i for i, r in enumerate(requests) if r.params.processes_logits]
    if not rows:
        return logits
    out = logits.float()
    if out is logits:
        out = out.clone()
    dev = out.device
    for i in rows:
        req, p, row = requests[i], requests[i].params, out[i]
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(req.prompt_token_ids).union(req.output_token_ids)), dtype=torch.long,
                                device=dev)
            vals = row[seen]
            row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and req.output_token_ids:
            ids, counts = torch.tensor(req.output_token_ids, dtype=torch.long, device=dev).unique(return_counts=True)
            row[ids] -= p.frequency_penalty * counts.float() + p.presence_penalty
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), dtype=torch.long, device=dev)
            row[ids] += torch.tensor(list(p.logit_bias.values()), dtype=torch.float32, device=dev)
    # an extreme penalty overflows fp32 (2 / 1e-40 = inf; a softmax over an inf is NaN and torch.multinomial raises
    # inside the step, ending every request of the batch): keep them finite, with room for a temperature >= 1e-5
    return out.clamp_(-PROCESSED_LOGIT_MAX, PROCESSED_LOGIT_MAX)


class Sampler:
    sampled_any = False  # whether the last sample_on_device drew any row (else its tokens are the greedy ones)

    def __call__(self, logits: torch.Tensor, requests: list[Request], process: bool = False,
                 greedy: torch.Tensor | None = None) -> list[int]:
        """logits [B, V] (row i belongs to requests[i]) -> B token ids on the host (one device->host copy)."""
        return self.sample_on_device(logits, requests, process, greedy).tolist()

    def sample_on_device(self, logits: torch.Tensor, requests: list[Request], process: bool = False,
                         greedy: torch.Tensor | None = None) -> torch.Tensor:
        """logits [B, V] -> token ids [B] (long) on logits' device, with no host sync of its own: overlapped decode
        keeps them there to feed the next step. Greedy rows: one argmax; unseeded sampled rows: one batched draw per
        (temperature, top_k, top_p) group; seeded rows: one draw each with the request's own generator.
        `process`: some request may have penalties or a logit bias (the engine knows; checking every row every step
        would cost the common case): `process_logits` first. `greedy`: logits' argmax [B] already computed (a decode
        graph's last node, graph_io.py); returned with the sampled rows written into it (ignored with `process`,
        whose logits differ)."""
        if logits.shape[0] != len(requests):
            raise ValueError(f"{logits.shape[0]} logit rows for {len(requests)} requests")
        if greedy is not None and greedy.shape != (len(requests),):
            raise ValueError(f"greedy tokens {tuple(greedy.shape)} for {len(requests)} requests")
        if process:
            logits, greedy = process_logits(logits, requests), None
        # [B]: right for every greedy row (on the GPU our one-pass kernel, ~1/3 of torch's reduce at B=1: argmax.py)
        if greedy is not None:
            tokens = greedy
        else:
            tokens = greedy_argmax(logits) if logits.is_cuda else logits.argmax(-1)
        self.sampled_any = False
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            p = req.params
            if p.temperature == 0.0:
                continue
            self.sampled_any = True
            if p.seed is None:
                groups.setdefault((p.temperature, p.top_k, p.top_p), []).append(i)
                continue
            if req.generator is None:
                req.generator = make_generator(p, logits.device)
            tokens[i:i + 1] = sample(logits[i:i + 1], p, req.generator)
        for rows in groups.values():
            idx = _rows(rows, logits.device)
            tokens[idx] = sample(logits[idx], requests[rows[0]].params)
        return tokens


def token_logprobs(logits: torch.Tensor, requests: list[Request], tokens: list[int]) -> dict[int, tuple] | None:
    """For each row whose request asks for logprobs: (token id, its log-probability, ((id, logprob), ...) the
    request's top-k alternatives, most likely first), keyed by row; None when no row asks (the common case: no work).

    NOTE: the log-probabilities are the model's own distribution (log_softmax of the raw logits, in fp32), before
    temperature, top-k and top-p reshape it for sampling (vLLM's default "raw" logprobs): they say how likely the
    model finds a token, whatever the sampling settings. One batched log_softmax over the rows that ask, one top-k
    at the largest k asked, one device->host copy."""
    rows = [i for i, r in enumerate(requests) if r.params.logprobs is not None]
    if not rows:
        return None
    idx = torch.tensor(rows, dtype=torch.long, device=logits.device)
    entries = logprob_entries(logits.index_select(0, idx), [tokens[i] for i in rows],
                              [requests[i].params.logprobs for i in rows])
    return dict(zip(rows, entries))


def logprob_entries(logits: torch.Tensor, targets: list[int], ks: list[int]) -> list[tuple]:
    """logits [R, V] (any float dtype), the token each row is scored for, each row's number of alternatives ->
    R entries (target, its log-probability, ((id, logprob), ...) the top k, most likely first): one log_softmax in
    fp32, one top-k at the largest k, one device->host copy."""
    lp = torch.log_softmax(logits.float(), dim=-1)  # [R, V]
    chosen = torch.tensor(targets, dtype=torch.long, device=logits.device)
    parts = [lp.gather(1, chosen[:, None])[:, 0]]
    k = max(ks)
    if k:
        top = lp.topk(k, dim=-1)
        parts += [top.values.flatten(), top.indices.flatten().to(lp.dtype)]  # ids < 2^24: exact in fp32
    flat = torch.cat(parts).tolist()
    n = len(targets)
    out = []
    for j, (t, kj) in enumerate(zip(targets, ks)):
        vals = flat[n + j * k: n + j * k + kj]
        ids = flat[n + n * k + j * k: n + n * k + j * k + kj]
        out.append((t, flat[j], tuple((int(a), v) for a, v in zip(ids, vals))))
    return out


def _rows(rows: list[int], device: torch.device) -> torch.Tensor:
    """Row indices on `device` without a blocking copy (pinned staging on CUDA)."""
    t = int64_tensor(rows)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def check_stop(req: Request, token: int, eos_token_ids: set[int], max_model_len: int) -> RequestStatus | None:
    """After `token` was appended: the finished status it causes (stop token, max_tokens, context full) or None."""
    p = req.params
    if token in p.stop_token_ids or (not p.ignore_eos and token in eos_token_ids):
        req.stop_reason = token
        return RequestStatus.FINISHED_STOPPED
    n_out = req.num_output_tokens  # resolved tokens only (overlapped decode may have placeholders queued after it)
    if n_out >= p.max_tokens or len(req.prompt_token_ids) + n_out >= max_model_len:
        return RequestStatus.FINISHED_LENGTH
    return None
