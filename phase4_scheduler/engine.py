"""LLMEngine: the synchronous core. add_request / abort_request / step() -> outputs, until nothing is unfinished.

    engine = LLMEngine.from_model("smollm2-135m")
    engine.add_request("a", tokenizer.encode("Hello"), SamplingParams(max_tokens=8, temperature=0))
    while engine.has_unfinished():
        for out in engine.step(): print(out.request_id, out.text_delta)

NOTE (layering, as vLLM v1): Scheduler (who runs, how many tokens) -> KVCacheManager (blocks, phase 1's allocator)
-> ModelRunner (one packed forward, phase 3's paged attention) -> Sampler -> detokenizer. The engine only glues
them: it owns the requests and turns each step's sampled tokens into RequestOutputs.

NOTE (host cost per step): at 100k tokens/s over 1024 sequences a whole decode step has ~10 ms, so the Python around
the forward must be O(B) with a tiny constant. The KV manager keeps block tables in a persistent int32 array (no
allocator call unless a request needs a new block), `prepare_inputs` (step_inputs.py) gathers a few ints per
request and does the rest in numpy (positions, slot mapping, the [B, W] block-table gather) and hands the runner CPU
tensors, the sampler does one argmax + one `.tolist()` for greedy batches, finished requests leave the running list
in one pass, and
`step(final_only=True)` (LLM.generate) builds no per-token RequestOutputs. bench_step_overhead.py measures it.

NOTE (increments): `step(increments=True)` returns, instead of RequestOutputs, only what changed, as tuples
(request_id, new_token_ids, text_delta, finish_reason, stop_reason, first_token_time, num_preemptions,
new_logprobs, prompt_logprobs): the engine process (engine_core.py) sends exactly these, and a RequestOutput would
cost it an object and a copy of the whole output list per request per step only to be cut down again. The values
are the ones `_output` puts in the same fields (tests/test_engine_increments.py checks it token for token and text
for text).

NOTE (logprobs, penalties, logit bias): a request with SamplingParams.logprobs gets (token, logprob, top
alternatives) per output token, from the step's logits (sampler.token_logprobs); penalties and logit_bias reshape its
logits before sampling (sampler.process_logits, from its token history on the host). While such a request runs,
decode stays synchronous (an overlapped step's logits are gone by the time its tokens resolve, and its history
holds placeholders), so other requests pay the overlap's ~10% then too.
"""
from __future__ import annotations

import os
import time

import torch

from common.errors import PromptTooLongError
from common.sampling import SamplingParams, check_prompt_fits
from phase4_scheduler.detokenizer import IncrementalDetokenizer
from phase4_scheduler.kv_manager import KVCacheManager
from phase4_scheduler.memory import DEFAULT_KV_MEMORY, freeze_heap, parse_memory  # noqa: F401  (re-exported)
from phase4_scheduler.model_runner import MIXED_ATTENTION_ENV, ModelRunner, kv_bytes_per_token
from phase4_scheduler.outputs import RequestOutput
from phase4_scheduler.overlap import PLACEHOLDER, InFlight, TokenRing, can_run_ahead, drop_pending, resolve
from phase4_scheduler.request import Request, RequestStatus
from phase4_scheduler.sampler import Sampler, check_stop, logprob_entries, token_logprobs, validate_params
from phase4_scheduler.scheduler import Scheduler
from phase4_scheduler.step_inputs import int64_tensor, prepare_inputs, to_device


def _done_prompt_logprobs(req: Request) -> list | None:
    """The request's prompt logprobs once all are computed, else None."""
    p = req.prompt_logprobs
    return p if p is not None and len(p) == len(req.prompt_token_ids) else None


def _noop() -> None:
    pass


def _advance(scheduled, logits: torch.Tensor) -> tuple[torch.Tensor, list[Request]]:
    """After a forward: each scheduled request's computed tokens advance; those with all their tokens cached sample
    now. Returns (their logits rows, those requests); prompt chunks that do not end their prompt sample nothing."""
    rows, ready = [], []
    for i, (req, n) in enumerate(scheduled):
        c = req.num_computed_tokens = req.num_computed_tokens + n
        if c == len(req.prompt_token_ids) + len(req.output_token_ids):  # req.num_tokens, inlined (per row per step)
            rows.append(i)
            ready.append(req)
    if len(ready) < len(scheduled):
        logits = logits[to_device(logits.device, int64_tensor(rows))[0]]  # (a plain .to(cuda) syncs the stream)
    return logits, ready


# the largest step the mixed-step graphs are captured for; larger steps run eagerly. Their static buffers and graph
# pool grow with it (the largest bucket's activations: ~5 GiB of buffers and a 22 GiB gate_up at 2^20 TinyLlama
# tokens): the static baseline's 2^20-token budget, captured in full, ran an 80 GB H100 out of memory (2026-12-05).
# A step that large computes for 100+ ms, so the launches a graph saves there are lost in it.
MIXED_GRAPH_MAX_TOKENS = 16384


def mixed_graphs_from_text(text: str) -> bool | str:
    """TITAN_MIXED_GRAPHS's and `titan serve --mixed-graphs`'s words: "full" -> "full", "0" / "off" -> False (no
    graphs), anything else ("piecewise", "1", "on") -> True (piecewise)."""
    return "full" if text == "full" else text not in ("0", "off")


def _mixed_graphs(flag: bool | str | None) -> bool | str:
    """None: TITAN_MIXED_GRAPHS: "full" (the default: attention inside the graphs), "piecewise" ("1", "on": graphs
    cut at the attentions) or off ("0"); unset, it is full unless TITAN_MIXED_ATTENTION=split (whose decode rows
    launch the decode kernel apart, so it can only run piecewise). The runner builds them only with CUDA graphs and
    the fused model.

    NOTE (why full is the default, 2026-12-06): on the H100, 512 seats, ShareGPT Poisson at 160-448 req/s, the
    same sweep piecewise and full (equal_latency_steady512{,_fullgraphs}_s1206_h100.json, TITAN_STEP_TIMING): a
    step carrying a prompt took 2.95-6.01 ms of GPU time full against 3.65-20.9 ms piecewise, and end-to-end p50
    fell 9-20% at every rate; offline 1024 x 128/128 the same within 0.5% (103.0k vs 103.2k tok/s)."""
    if flag is None:
        env = os.environ.get("TITAN_MIXED_GRAPHS")
        if env is None:
            return "full" if os.environ.get(MIXED_ATTENTION_ENV, "packed") == "packed" else True
        flag = mixed_graphs_from_text(env)
    if flag not in (True, False, "full"):
        raise ValueError(f"mixed_graphs must be True (piecewise), False or 'full', got {flag!r}")
    return flag


class LLMEngine:
    def __init__(self, loaded, *, max_model_len: int | None = None, max_num_seqs: int = 64,
                 max_num_batched_tokens: int = 512, block_size: int = 16, num_blocks: int | None = None,
                 kv_memory: str | int | float | None = None, enable_chunked_prefill: bool = True,
                 backend: str = "auto", scheduler_cls=Scheduler, detokenize: bool = True, runner_tensors: bool = True,
                 cuda_graph: bool | None = None, fuse: bool = False, admit_min_free_seats: int | None = None,
                 overlap: bool | None = None, kv_cache_dtype: str = "auto", mixed_graphs: bool | str | None = None,
                 overlap_mixed: bool | None = None):
        """`loaded`: a common.model_loader.LoadedModel. KV pool: `num_blocks`, else `kv_memory`, else the default.
        `detokenize=False`: no text, token ids only (no per-token decode; stop strings are then refused).
        `runner_tensors`: hand the runner CPU tensors (False: Python lists, for a runner that takes only lists).
        `cuda_graph`, `fuse`: the ModelRunner's options (decode CUDA graphs up to max_num_seqs; fused kernels).
        `admit_min_free_seats`: admission batching (scheduler.py); default max_num_seqs // 16 with CUDA graphs (a
        prefill step is eager and costs several graphed decode steps), 1 otherwise.
        `overlap`: overlapped decode (overlap.py: launch step N+1 before step N's tokens reach the host); default on
        with CUDA graphs. step() then returns a decode step's outputs one call later. `overlap_mixed`: also run
        ahead into steps that admit requests or carry prompt chunks (overlap.py's NOTE on mixed steps); default on
        wherever overlapped decode is (TITAN_OVERLAP_MIXED=0 turns it off): on the H100 at 512 seats it took p50
        from 1.96 to 1.51 s at 320 req/s (2026-12-05, equal_latency_steady512_mixedov{0,1}_h100.json).
        `kv_cache_dtype`: "auto" (the model's dtype) or "fp8" (phase 3's e4m3 pool with per-token scales: about
        twice the blocks for the same kv_memory).
        `mixed_graphs`: CUDA graphs for steps with a prefill, up to the step budget or MIXED_GRAPH_MAX_TOKENS,
        whichever is smaller: "full" (one graph per token bucket, attention inside), True (piecewise: cut at the
        attentions) or False; mixed_graphs.py; built only with CUDA graphs and the fused model. Default full
        (TITAN_MIXED_GRAPHS=piecewise / 0 selects the others; `_mixed_graphs`)."""
        cfg = loaded.config
        self.loaded, self.config, self.tokenizer = loaded, cfg, loaded.tokenizer
        if max_model_len is not None and not 2 <= max_model_len <= cfg.max_position_embeddings:
            raise ValueError(f"max_model_len={max_model_len} is outside 2..{cfg.max_position_embeddings}, the context "
                             "this model was trained for: pick a value in that range (or leave it unset)")
        self.max_model_len = max_model_len or cfg.max_position_embeddings
        if num_blocks is None:
            spec = kv_memory if kv_memory is not None else DEFAULT_KV_MEMORY[loaded.device.type]
            per_block = block_size * kv_bytes_per_token(cfg, loaded.dtype, kv_cache_dtype)
            num_blocks = parse_memory(spec, loaded.device) // per_block
            if num_blocks < 1:
                raise ValueError(f"kv_memory={spec!r} holds no block of {per_block} bytes: give more KV memory")
        self.kv = KVCacheManager(num_blocks, block_size)
        mixed_graphs = _mixed_graphs(mixed_graphs)
        self.runner = ModelRunner(loaded, num_blocks, block_size, backend=backend, cuda_graph=cuda_graph,
                                  max_num_seqs=max_num_seqs, max_model_len=self.max_model_len, fuse=fuse,
                                  kv_cache_dtype=kv_cache_dtype,
                                  mixed_graph_tokens=(min(max_num_batched_tokens, MIXED_GRAPH_MAX_TOKENS)
                                                      if mixed_graphs else 0),
                                  mixed_graphs_full=mixed_graphs == "full")
        if admit_min_free_seats is None:  # batch admissions only where a prefill step costs more than a decode step
            admit_min_free_seats = max(1, max_num_seqs // 16) if self.runner.graphs is not None else 1
        self.scheduler = scheduler_cls(self.kv, max_num_seqs=max_num_seqs,
                                       max_num_batched_tokens=max_num_batched_tokens,
                                       enable_chunked_prefill=enable_chunked_prefill,
                                       admit_min_free_seats=admit_min_free_seats)
        if not self.scheduler.enable_chunked_prefill and self.scheduler.max_num_batched_tokens < self.max_model_len - 1:
            # unchunked, a prompt (or a preempted request's recompute: prompt + outputs, up to max_model_len - 1
            # tokens) must fit one step's budget; one that does not would wait in the queue forever
            raise ValueError(f"without chunked prefill max_num_batched_tokens ({self.scheduler.max_num_batched_tokens})"
                             f" must be at least max_model_len - 1 ({self.max_model_len - 1}), or a longer prompt "
                             "never runs: raise max_num_batched_tokens, lower max_model_len, or enable chunked prefill")
        self.runner_tensors = runner_tensors
        self.detokenize = detokenize and self.tokenizer is not None
        self.sampler = Sampler()
        self.eos_token_ids = set(cfg.eos_token_ids)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            self.eos_token_ids.add(self.tokenizer.eos_token_id)
        self.requests: dict[str, Request] = {}
        self._sync_ids: set[str] = set()  # unfinished requests with logprobs or logits processors (see step)
        self._prompt_lp_ids: set[str] = set()  # requests whose prompt logprobs are not all computed yet
        self.overlap = self.runner.graphs is not None if overlap is None else overlap
        self._ring = TokenRing(max_num_seqs, loaded.device) if self.overlap else None
        self.overlap_mixed = self.overlap and (os.environ.get("TITAN_OVERLAP_MIXED", "1") not in ("0", "off")
                                               if overlap_mixed is None else overlap_mixed)
        self._inflight: InFlight | None = None  # a launched decode step whose tokens are not resolved yet
        self.counters = {"num_steps": 0, "num_requests": 0, "num_finished": 0, "num_aborted": 0,
                         "num_prompt_tokens": 0, "num_generation_tokens": 0, "num_batched_tokens": 0,
                         "num_overlapped_steps": 0, "num_overlapped_mixed_steps": 0}

    @classmethod
    def from_model(cls, model: str = "smollm2-135m", *, device: str = "auto", dtype=None,
                   random_weights: bool = False, num_layers: int | None = None, seed: int = 0,
                   tokenizer: str | None = None, **kwargs):
        """Load a model by preset / path / repo id (common.model_loader.load_model) and build an engine on it."""
        from common.model_loader import load_model

        return cls(load_model(model, device=device, dtype=dtype, random_weights=random_weights, seed=seed,
                              num_layers=num_layers, tokenizer=tokenizer), **kwargs)

    # -- requests ----------------------------------------------------------------------------------------------------
    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Every check add_request makes, without queueing anything (the server calls it to answer 4xx early)."""
        validate_params(params)
        if not prompt_token_ids:
            raise ValueError("the prompt is empty: give at least one token")
        vocab = self.config.vocab_size
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab}), the model's vocabulary")
        bad = [t for t in (params.logit_bias or {}) if t >= vocab]
        if bad:
            raise ValueError(f"logit_bias names token ids {bad[:5]} outside the vocabulary [0, {vocab})")
        check_prompt_fits(len(prompt_token_ids), params.max_tokens, self.max_model_len)
        need = len(prompt_token_ids) + params.max_tokens
        if need > self.kv.num_tokens_capacity:
            raise PromptTooLongError(
                f"prompt + max_tokens = {need} tokens exceeds the whole KV pool ({self.kv.num_tokens_capacity} "
                "tokens): lower max_tokens or give the engine more KV memory (--kv-memory)")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer, and this model was loaded without one")
        if params.stop and not self.detokenize:
            raise ValueError("stop strings need detokenisation, and this engine was built with detokenize=False")

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
                    validated: bool = False) -> Request:
        """Queue a request. `validated=True`: the caller already ran validate() on these exact arguments."""
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        if not validated:
            self.validate(prompt_token_ids, params)
        req = Request(request_id, list(prompt_token_ids), params)
        if params.logprobs is not None:
            req.logprobs = []
        if params.prompt_logprobs is not None:
            req.prompt_logprobs = [(req.prompt_token_ids[0], None, ())]  # the first token has no context to score
            if len(req.prompt_token_ids) > 1:
                self._prompt_lp_ids.add(request_id)
        if params.logprobs is not None or params.prompt_logprobs is not None or params.processes_logits:
            self._sync_ids.add(request_id)  # such a request keeps decode synchronous (see step)
        if self.detokenize:
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
        self._sync_ids.discard(request_id)
        self._prompt_lp_ids.discard(request_id)
        drop_pending(req)
        self.scheduler.finish(req, RequestStatus.FINISHED_ABORTED)
        self.counters["num_aborted"] += 1
        return self._output(req)

    def warmup(self, prompt_len: int = 24, max_tokens: int = 4, prefill_ladder: bool | None = None) -> None:
        """Run one short request through prefill and decode and drop it: Triton compiles its kernels (seconds on a
        cold cache) before the first real request, not during it. The server calls this before it listens.

        prefill_ladder (default: on CUDA): also prefill prompts of 2, 4, 8, ... tokens up to the step budget, one at
        a time, so every prefill size class has run once (cuBLAS picks and lazily loads a kernel per shape class;
        the first ShareGPT requests on the H200 had TTFT p99 571 ms at 16 req/s, vLLM 83 ms, while p90 was 51 ms)."""
        if self.requests:
            raise RuntimeError("warmup() is for an idle engine: requests are in flight")
        if prefill_ladder is None:
            prefill_ladder = self.runner.device.type == "cuda"
        room = min(self.max_model_len - 1, self.kv.num_total_blocks * self.kv.block_size - 1)
        sizes = [min(prompt_len, self.max_model_len - max_tokens)]
        if prefill_ladder:
            top = min(self.scheduler.max_num_batched_tokens, room)
            sizes += [n for n in (2 ** k for k in range(1, 15)) if n < top] + [top]
        for i, n in enumerate(sizes):
            ids = [(7 * j + 11) % self.config.vocab_size for j in range(n)]
            self.add_request(f"__warmup_{i}__", ids, SamplingParams(max_tokens=max_tokens if i == 0 else 1,
                                                                   temperature=0.0, ignore_eos=True))
            while self.has_unfinished():
                self.step(final_only=True)
        for key in ("num_steps", "num_requests", "num_finished", "num_prompt_tokens", "num_generation_tokens",
                    "num_batched_tokens", "num_overlapped_steps"):
            self.counters[key] = 0  # the warm-up is not traffic

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # -- the step ----------------------------------------------------------------------------------------------------
    def step(self, final_only: bool = False, on_forward=None, increments: bool = False) -> list:
        """Schedule, run one forward, sample, update requests. Outputs for every request that got a token (only for
        those that finished with `final_only`, as LLM.generate asks: no per-token output objects). `on_forward()`
        is called once the step's forward is launched (or at once if it launches none), before the host waits for
        the device: AsyncEngine delivers the previous outputs from then on, so that work overlaps the forward.
        `increments=True`: increment tuples instead of RequestOutputs (the module NOTE)."""
        hook = on_forward or _noop
        prev = self._inflight
        if prev is not None:  # overlapped decode: launch the next step first if it can be fed from the device
            ahead = can_run_ahead(self.scheduler, prev) or (self.overlap_mixed and not self._sync_ids
                                                            and can_run_ahead(self.scheduler, prev, mixed=True))
            self._inflight = self._launch(self.scheduler.schedule(), prev) if ahead else None
            hook()
            return self._update(*resolve(prev), final_only, increments)  # else: drained; the next steps synchronously
        plan = self.scheduler.schedule()
        if plan.is_empty:
            hook()
            return []
        scheduled = plan.scheduled
        if self.overlap and not self._sync_ids and (self.overlap_mixed or (plan.decode_only
                                                                           and not self.scheduler.may_admit())):
            self._inflight = self._launch(plan, None)  # its outputs come back from the next call
            hook()
            return []
        extra = self._prompt_rows(scheduled) if self._prompt_lp_ids else None
        if extra:  # prompt logprobs: those rows' logits too (an eager forward)
            logits, prompt_logits = self.runner.execute(*self._prepare(plan), extra_rows=extra[0])
        else:
            logits = self.runner.execute(*self._prepare(plan))  # [B, V]
        hook()
        if extra:
            self._add_prompt_logprobs(prompt_logits, *extra[1:])
        self.counters["num_steps"] += 1
        self.counters["num_batched_tokens"] += plan.num_batched_tokens
        logits, ready = _advance(scheduled, logits)
        if not ready:
            return []
        sync = bool(self._sync_ids)
        if sync:
            tokens = self.sampler(logits, ready, process=True)
        else:
            greedy = self._graph_greedy(scheduled, ready)
            tokens = self.sampler(logits, ready, greedy=greedy[0] if greedy else None)
        for req, tok in zip(ready, tokens):
            req.output_token_ids.append(tok)
        if sync:  # logprobs come from these logits: such requests never run overlapped (above)
            for i, entry in (token_logprobs(logits, ready, tokens) or {}).items():
                ready[i].logprobs.append(entry)
        return self._update(ready, tokens, final_only, increments)

    def _prompt_rows(self, scheduled) -> tuple | None:
        """(token rows, their requests, the prompt tokens they score) for this step's prompt-logprobs requests: a
        row at prompt position p scores prompt token p + 1. Only positions not scored before (a preempted request
        recomputes its prompt without scoring it twice); None when there are none."""
        rows, owners, targets, off = [], [], [], 0
        for req, n in scheduled:
            lps = req.prompt_logprobs
            if lps is not None and req.request_id in self._prompt_lp_ids:
                prompt, c = req.prompt_token_ids, req.num_computed_tokens
                for p in range(max(c, len(lps) - 1), min(c + n, len(prompt) - 1)):
                    rows.append(off + p - c)
                    owners.append(req)
                    targets.append(prompt[p + 1])
            off += n
        return (rows, owners, targets) if rows else None

    def _add_prompt_logprobs(self, logits, owners: list[Request], targets: list[int]) -> None:
        for req, entry in zip(owners, logprob_entries(logits, targets, [r.params.prompt_logprobs for r in owners])):
            req.prompt_logprobs.append(entry)
            if len(req.prompt_logprobs) == len(req.prompt_token_ids):
                self._prompt_lp_ids.discard(req.request_id)

    def _launch(self, plan, prev: InFlight | None) -> InFlight:
        """Run a plan without waiting for its tokens: sampled on the device, a non-blocking copy to the host, a
        placeholder per request that samples. With `prev`, the input ids of the requests that sampled in prev come
        from prev's tokens on the device: gathered (a decode-only plan over them) or scattered into the host's ids
        (a mixed plan: overlap.py's NOTE on mixed steps)."""
        scheduled = plan.scheduled
        if (prev is not None and plan.preempted) or not (plan.decode_only or self.overlap_mixed):
            raise RuntimeError(f"overlapped decode expected a plan it can run ahead (no preemption after a launched "
                               f"step; a mixed plan only with overlap_mixed): {plan}")
        src = None
        if prev is not None:
            src_rows, dst, off, row_of = [], [], -1, prev.row_of.get
            for req, n in scheduled:  # once per row per step
                off += n
                if req.num_pending_tokens:  # its last input is prev's token
                    row = row_of(req.request_id)
                    if row is not None:
                        src_rows.append(row)
                        dst.append(off)
            if plan.decode_only and len(src_rows) == len(scheduled):
                src = (prev.tokens, int64_tensor(src_rows))
            elif self.overlap_mixed:
                src = (prev.tokens, int64_tensor(src_rows), int64_tensor(dst))
            else:
                raise RuntimeError(f"overlapped decode expected a decode-only plan over the in-flight requests: {plan}")
        logits = self.runner.execute(*self._prepare(plan), token_src=src)  # [B, V]
        logits, ready = _advance(scheduled, logits)
        greedy = self._graph_greedy(scheduled, ready)
        tokens = self.sampler.sample_on_device(logits, ready, greedy=greedy[0] if greedy else None)  # [B], device
        if greedy is not None and not self.sampler.sampled_any:  # the graph wrote the tokens to the host already
            host, done = greedy[1], greedy[2]
        else:
            host, done = self._ring.copy_out(tokens)
        for req in ready:
            req.output_token_ids.append(PLACEHOLDER)
            req.num_pending_tokens += 1
        self.counters["num_steps"] += 1
        self.counters["num_batched_tokens"] += plan.num_batched_tokens
        self.counters["num_overlapped_steps"] += prev is not None
        self.counters["num_overlapped_mixed_steps"] += prev is not None and not plan.decode_only
        return InFlight(ready, {r.request_id: i for i, r in enumerate(ready)}, tokens, host, done,
                        frozenset(r.request_id for r, _ in scheduled))

    def _graph_greedy(self, scheduled, ready) -> tuple | None:
        """The decode graph's (greedy tokens on the device, pinned host copy, event) when the step replayed one
        (graph_io.py) and every row samples (rows line up with the tokens), else None."""
        out = self.runner.graph_tokens
        return out if out is not None and len(ready) == len(scheduled) else None

    def _prepare(self, plan) -> tuple:
        return prepare_inputs(plan, self.kv, self.runner_tensors)

    def _update(self, ready: list[Request], tokens: list[int], final_only: bool, increments: bool = False) -> list:
        """Each request's new token is in its output list already: check stop conditions, detokenise; finish and free
        the finished requests."""
        now = time.monotonic()
        eos, max_len = self.eos_token_ids, self.max_model_len
        emit, finished = [], []
        for req, tok in zip(ready, tokens):
            if req.first_token_time is None:
                req.first_token_time = now
            status = check_stop(req, tok, eos, max_len)
            if req.detokenizer is not None:
                hit = req.detokenizer.add_token(tok)
                if hit is not None and status in (None, RequestStatus.FINISHED_LENGTH):
                    req.stop_reason, status = hit, RequestStatus.FINISHED_STOPPED
            if status is not None:
                finished.append((req, status))
                emit.append(req)
            elif not final_only:
                emit.append(req)
        self.counters["num_generation_tokens"] += len(ready)
        if finished:
            self.scheduler.finish_running(finished)
            for req, _ in finished:
                drop_pending(req)  # overlapped decode: its next token is already in flight, and is dropped
                self.requests.pop(req.request_id, None)
                self._sync_ids.discard(req.request_id)
                self._prompt_lp_ids.discard(req.request_id)
            self.counters["num_finished"] += len(finished)
        make = self._increment if increments else self._output
        return [make(req) for req in emit]

    def _output(self, req: Request) -> RequestOutput:
        n = req.num_output_tokens  # placeholders of in-flight steps are not outputs yet
        out_ids = req.output_token_ids[:n] if req.num_pending_tokens else req.output_token_ids
        returned = req.num_returned_tokens
        new = out_ids[returned:]
        req.num_returned_tokens = n
        status, det = req.status, req.detokenizer
        finished = status.is_finished
        delta, text = (det.delta(finished), det.text) if det is not None else ("", "")
        if det is not None and det.num_emitted_chars != len(text):  # text = the deltas so far: no held-back
            text = text[:det.num_emitted_chars]  # stop-string prefix that a later step may cut (as ProcessEngine)
        out = RequestOutput(req.request_id, req.prompt_token_ids, new, list(out_ids), delta, text, finished,
                            status.value if finished else None, req.stop_reason, req.arrival_time,
                            req.first_token_time, req.num_preemptions)
        lps = req.logprobs
        if lps is not None or req.prompt_logprobs is not None:  # (outputs.py: set only when asked)
            out.new_logprobs = lps[returned:n] if lps is not None else None
            out.logprobs = lps[:n] if lps is not None else None
            out.prompt_logprobs = _done_prompt_logprobs(req)
        return out

    def _increment(self, req: Request) -> tuple:
        """What `_output` would put in (request_id, new_token_ids, text_delta, finish_reason, stop_reason,
        first_token_time, num_preemptions, new_logprobs, prompt_logprobs (in the first increment only)), with the
        same side effects (returned tokens, emitted text)."""
        n = req.num_output_tokens
        new = req.output_token_ids[req.num_returned_tokens:n]
        lps = req.logprobs
        new_lps = lps[req.num_returned_tokens:n] if lps is not None else None
        plps = _done_prompt_logprobs(req) if req.num_returned_tokens == 0 else None  # sent once, with the first
        req.num_returned_tokens = n
        status, det = req.status, req.detokenizer
        finished = status.is_finished
        return (req.request_id, new, det.delta(finished) if det is not None else "",
                status.value if finished else None, req.stop_reason, req.first_token_time, req.num_preemptions,
                new_lps, plps)

    # -- inspection --------------------------------------------------------------------------------------------------
    def stats(self) -> dict:
        return {"num_running": len(self.scheduler.running), "num_waiting": len(self.scheduler.waiting),
                "kv_usage": self.kv.usage, "num_free_blocks": self.kv.num_free_blocks,
                "num_total_blocks": self.kv.num_total_blocks,
                "num_preemptions": self.scheduler.num_preemptions, **self.counters}

    def __repr__(self) -> str:
        return f"LLMEngine({self.loaded.source}, max_model_len={self.max_model_len},\n  {self.scheduler},\n  {self.runner})"
