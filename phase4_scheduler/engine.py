"""LLMEngine: the synchronous core. add_request / abort_request / step() -> outputs, until nothing is unfinished.

    engine = LLMEngine.from_model("smollm2-135m")
    engine.add_request("a", tokenizer.encode("Hello"), SamplingParams(max_tokens=8, temperature=0))
    while engine.has_unfinished():
        for out in engine.step(): print(out.request_id, out.text_delta)

NOTE (layering, as vLLM v1): Scheduler (who runs, how many tokens) -> KVCacheManager (blocks, phase 1's allocator)
-> ModelRunner (one packed forward, phase 3's paged attention) -> Sampler -> detokenizer. The engine only glues
them: it owns the requests and turns each step's sampled tokens into RequestOutputs.
"""
from __future__ import annotations

import re
import time

import torch

from common.errors import PromptTooLongError
from common.sampling import SamplingParams, check_prompt_fits
from phase4_scheduler.detokenizer import IncrementalDetokenizer
from phase4_scheduler.kv_manager import KVCacheManager
from phase4_scheduler.model_runner import ModelRunner
from phase4_scheduler.outputs import RequestOutput
from phase4_scheduler.request import Request, RequestStatus
from phase4_scheduler.sampler import Sampler, check_stop, validate_params
from phase4_scheduler.scheduler import Scheduler

DEFAULT_KV_MEMORY = {"cpu": 256 * 2**20, "cuda": 0.5}  # bytes on CPU; a fraction of free GPU memory on CUDA
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30}


def parse_memory(spec: str | int | float, device: torch.device) -> int:
    """'512MiB' / '2GiB' / 1000000 (bytes) / 0.5 (a fraction of free GPU memory) -> bytes."""
    if isinstance(spec, float) and 0 < spec < 1:
        if device.type != "cuda":
            raise ValueError(f"kv_memory={spec} is a fraction of free GPU memory; on {device} give bytes ('256MiB')")
        return int(torch.cuda.mem_get_info(device)[0] * spec)
    if isinstance(spec, (int, float)) and spec > 0:
        return int(spec)
    m = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", str(spec))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"kv_memory must look like '512MiB', '2GiB' or a number of bytes, got {spec!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class LLMEngine:
    def __init__(self, loaded, *, max_model_len: int | None = None, max_num_seqs: int = 64,
                 max_num_batched_tokens: int = 512, block_size: int = 16, num_blocks: int | None = None,
                 kv_memory: str | int | float | None = None, enable_chunked_prefill: bool = True,
                 backend: str = "auto", scheduler_cls=Scheduler):
        """`loaded`: a common.model_loader.LoadedModel. KV pool: `num_blocks`, else `kv_memory`, else the default."""
        cfg = loaded.config
        self.loaded, self.config, self.tokenizer = loaded, cfg, loaded.tokenizer
        if max_model_len is not None and not 2 <= max_model_len <= cfg.max_position_embeddings:
            raise ValueError(f"max_model_len={max_model_len} is outside 2..{cfg.max_position_embeddings}, the context "
                             "this model was trained for: pick a value in that range (or leave it unset)")
        self.max_model_len = max_model_len or cfg.max_position_embeddings
        if num_blocks is None:
            spec = kv_memory if kv_memory is not None else DEFAULT_KV_MEMORY[loaded.device.type]
            per_block = block_size * cfg.kv_bytes_per_token(torch.empty(0, dtype=loaded.dtype).element_size())
            num_blocks = parse_memory(spec, loaded.device) // per_block
            if num_blocks < 1:
                raise ValueError(f"kv_memory={spec!r} holds no block of {per_block} bytes: give more KV memory")
        self.kv = KVCacheManager(num_blocks, block_size)
        self.scheduler = scheduler_cls(self.kv, max_num_seqs=max_num_seqs,
                                       max_num_batched_tokens=max_num_batched_tokens,
                                       enable_chunked_prefill=enable_chunked_prefill)
        self.runner = ModelRunner(loaded, num_blocks, block_size, backend=backend)
        self.sampler = Sampler()
        self.eos_token_ids = set(cfg.eos_token_ids)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            self.eos_token_ids.add(self.tokenizer.eos_token_id)
        self.requests: dict[str, Request] = {}
        self.counters = {"num_steps": 0, "num_requests": 0, "num_finished": 0, "num_aborted": 0,
                         "num_prompt_tokens": 0, "num_generation_tokens": 0, "num_batched_tokens": 0}

    @classmethod
    def from_model(cls, model: str = "smollm2-135m", *, device: str = "auto", dtype=None,
                   random_weights: bool = False, num_layers: int | None = None, seed: int = 0, **kwargs):
        """Load a model by preset / path / repo id (common.model_loader.load_model) and build an engine on it."""
        from common.model_loader import load_model

        return cls(load_model(model, device=device, dtype=dtype, random_weights=random_weights, seed=seed,
                              num_layers=num_layers), **kwargs)

    # -- requests ----------------------------------------------------------------------------------------------------
    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Every check add_request makes, without queueing anything (the server calls it to answer 4xx early)."""
        validate_params(params)
        if not prompt_token_ids:
            raise ValueError("the prompt is empty: give at least one token")
        vocab = self.config.vocab_size
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab}), the model's vocabulary")
        check_prompt_fits(len(prompt_token_ids), params.max_tokens, self.max_model_len)
        need = len(prompt_token_ids) + params.max_tokens
        if need > self.kv.num_tokens_capacity:
            raise PromptTooLongError(
                f"prompt + max_tokens = {need} tokens exceeds the whole KV pool ({self.kv.num_tokens_capacity} "
                "tokens): lower max_tokens or give the engine more KV memory (--kv-memory)")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer, and this model was loaded without one")

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> Request:
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        self.validate(prompt_token_ids, params)
        req = Request(request_id, list(prompt_token_ids), params)
        if self.tokenizer is not None:
            req.detokenizer = IncrementalDetokenizer(self.tokenizer, req.prompt_token_ids, params.stop)
        self.requests[request_id] = req
        self.scheduler.add(req)
        self.counters["num_requests"] += 1
        self.counters["num_prompt_tokens"] += len(prompt_token_ids)
        return req

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its blocks; returns its final output (None if it is unknown or done)."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        self.scheduler.finish(req, RequestStatus.FINISHED_ABORTED)
        self.counters["num_aborted"] += 1
        return self._output(req)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # -- the step ----------------------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run one forward, sample, update requests. Outputs for every request that got a token."""
        plan = self.scheduler.schedule()
        if plan.is_empty:
            return []
        token_ids, positions, q_lens, seq_lens, tables = [], [], [], [], []
        for req, n in plan.scheduled:
            c = req.num_computed_tokens
            token_ids += req.all_token_ids[c:c + n]
            positions += range(c, c + n)
            q_lens.append(n)
            seq_lens.append(c + n)
            tables.append(self.kv.block_table(req.request_id))
        slots = self.kv.slot_mapping([r.request_id for r, _ in plan.scheduled], q_lens)
        logits = self.runner.execute(token_ids, positions, q_lens, seq_lens, tables, slots)  # [B, V]
        self.counters["num_steps"] += 1
        self.counters["num_batched_tokens"] += len(token_ids)
        rows, ready = [], []
        for i, (req, n) in enumerate(plan.scheduled):
            req.num_computed_tokens += n
            if req.num_computed_tokens == req.num_tokens:  # all its tokens are cached: it samples now
                rows.append(i)
                ready.append(req)
        if not ready:
            return []
        tokens = self.sampler(logits[rows], ready)
        now = time.monotonic()
        outputs = []
        for req, tok in zip(ready, tokens):
            req.output_token_ids.append(tok)
            req.first_token_time = req.first_token_time or now
            self.counters["num_generation_tokens"] += 1
            status = check_stop(req, tok, self.eos_token_ids, self.max_model_len)
            if req.detokenizer is not None:
                hit = req.detokenizer.add_token(tok)
                if hit is not None and status in (None, RequestStatus.FINISHED_LENGTH):
                    req.stop_reason, status = hit, RequestStatus.FINISHED_STOPPED
            if status is not None:
                self.scheduler.finish(req, status)
                self.requests.pop(req.request_id, None)
                self.counters["num_finished"] += 1
            outputs.append(self._output(req))
        return outputs

    def _output(self, req: Request) -> RequestOutput:
        new = req.output_token_ids[req.num_returned_tokens:]
        req.num_returned_tokens = len(req.output_token_ids)
        det = req.detokenizer
        return RequestOutput(
            req.request_id, req.prompt_token_ids, new_token_ids=new, output_token_ids=list(req.output_token_ids),
            text_delta=det.delta(req.is_finished) if det is not None else "",
            text=det.text if det is not None else "", finished=req.is_finished,
            finish_reason=req.status.finish_reason, stop_reason=req.stop_reason, arrival_time=req.arrival_time,
            first_token_time=req.first_token_time, num_preemptions=req.num_preemptions)

    # -- inspection --------------------------------------------------------------------------------------------------
    def stats(self) -> dict:
        return {"num_running": len(self.scheduler.running), "num_waiting": len(self.scheduler.waiting),
                "kv_usage": self.kv.usage, "num_free_blocks": self.kv.num_free_blocks,
                "num_total_blocks": self.kv.num_total_blocks,
                "num_preemptions": self.scheduler.num_preemptions, **self.counters}

    def __repr__(self) -> str:
        return f"LLMEngine({self.loaded.source}, max_model_len={self.max_model_len},\n  {self.scheduler},\n  {self.runner})"
