"""ModelRunner: owns the model and the paged KV pool, runs ONE forward per step over mixed prefill/decode requests.

A step's tokens are packed into one row, vLLM-style: requests A (3 prompt tokens), B (1 decode token), C (2-token
prefill chunk) become input_ids [1, 6] = [a0 a1 a2 | b7 | c4 c5] with explicit positions [0 1 2 | 7 | 4 5]. The
linear layers see one [6, hidden] matrix; only attention needs to know where sequences start and end, and it gets
that from a `BatchAttention` context (cu_seqlens, seq_lens, block tables, slot mapping) that speaks the
`attend(layer, q, k, v)` interface common/llama.py calls.

NOTE (paths): on CUDA, phase 3's Triton kernels through the seam ("kv_cache.write" + "attention.paged_decode" for
decode-only steps, or phase 4's one-kernel "attention.decode_fused" below 512 (sequence, KV head) pairs;
"attention.paged_prefill" for anything with a prefill); on CPU their plain-PyTorch references ("*_ref": gather each
sequence's pages, SDPA), exact in fp32. Decode-only steps on CUDA replay a CUDA graph captured for the next larger
batch size (phase4_scheduler/cuda_graphs.py); steps with a prefill replay piecewise graphs around eager attention
with the fused model (mixed_graphs.py), else run eagerly.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from common import artifacts
from phase4_scheduler.step_inputs import to_device
from phase4_scheduler.step_timer import StepTimer, step_timing_enabled


KV_CACHE_DTYPES = ("auto", "fp8")
DECODE_ENV = "TITAN_DECODE_ATTENTION"  # "fused" (default) or "unfused": read when a ModelRunner is built
FP8_FUSED_ENV = "TITAN_FP8_FUSED"  # "0": decode-only steps over an FP8 pool run the four unfused kernels
# (default: the fused kernel)
# decode steps with fewer (sequence, KV head) pairs than this run the fused decode attention; larger ones the unfused
# four kernels. Measured on the H200 (results/decode_attention_h200.json, decode_attention_gated_h200.json; 22
# layers, TinyLlama shapes, us per layer): B=1/256 tokens 3.9 vs 5.2, B=64/512 16.6 vs 21.5, but B=256/512 45.5 vs
# 40.4 and B=1024/192 66.7 vs 62.1: registers (136 vs 112 per thread at that tile, 7 vs 9 programs per SM;
# decode_resources.py). The kernel now takes 103 there; raise this once the GPU has timed it.
FUSED_DECODE_MAX_PAIRS = 512
# Steps with a prefill: "packed" (default) attends every row with the paged prefill kernel in one launch; "split"
# attends the one-token sequences (the decodes) with the paged decode kernel instead (BatchAttention's NOTE).
MIXED_ATTENTION_ENV, MIXED_ATTENTION_MODES = "TITAN_MIXED_ATTENTION", ("packed", "split")
FP8, SCALE_DTYPE = torch.float8_e4m3fn, torch.float16  # phase 3's FP8 cache format (phase3_paged_fp8/cache_write.py)


def kv_bytes_per_token(cfg, model_dtype: torch.dtype, kv_cache_dtype: str = "auto") -> int:
    """Pool bytes one token occupies across all layers: K and V in the model's dtype, or FP8 plus one fp16 scale per
    KV head each."""
    if kv_cache_dtype == "fp8":
        return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.head_dim + SCALE_DTYPE.itemsize)
    return cfg.kv_bytes_per_token(torch.empty(0, dtype=model_dtype).element_size())


def as_cpu_tensor(x, dtype: torch.dtype) -> torch.Tensor:
    """A Python list or a CPU tensor -> a CPU tensor of `dtype` (the engine may hand over either)."""
    return x.to(dtype) if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=dtype)


def pad_tables(tables, width: int | None = None) -> torch.Tensor:
    """Block tables as a list of lists (ragged) or a [B, W] tensor -> int32 [B, max(W, width)], padded with 0."""
    if isinstance(tables, torch.Tensor):
        t = tables.to(torch.int32)
        return t if width is None or t.shape[1] >= width else F.pad(t, (0, width - t.shape[1]))
    w = max(max(map(len, tables)), width or 0)
    return torch.tensor([list(t) + [0] * (w - len(t)) for t in tables], dtype=torch.int32)


class BatchAttention:
    """The attention context of one packed step: `attend(layer, q, k, v)` over the paged pool (device tensors)."""

    def __init__(self, runner: "ModelRunner", block_tables: torch.Tensor, seq_lens: torch.Tensor,
                 slot_mapping: torch.Tensor, cu_seqlens: torch.Tensor | None = None, max_q_len: int = 1,
                 single: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
        """`single` (a step with a prefill, runner.mixed_attention == "split"): (their rows [S] int64, block tables
        [S, W], seq_lens [S]) of the one-token sequences, attended by the decode kernel.

        NOTE (split mixed steps): a serving step packs hundreds of decodes beside a prompt or two. The prefill
        kernel (GQA-packed) gives each decode G rows of a 64-row tile and no split over its history; the decode
        kernel is built for exactly them (one query, GQA heads together, split-KV). "split" costs a gather and a
        scatter of q / out rows per layer; bench_mixed_attention times both at serving shapes."""
        self.runner = runner
        self.single = single
        self.block_tables = block_tables  # [B, max_blocks] int32
        self.seq_lens = seq_lens  # [B] int32: tokens cached after this step
        self.slot_mapping = slot_mapping  # [T] int64: where each new token's K/V goes
        self.cu_seqlens = cu_seqlens  # [B+1] int32, None for a decode-only step (one token per sequence)
        self.max_q_len = max_q_len
        self.decode_only = max_q_len == 1
        self.seq_len = 0  # unused: the runner passes positions explicitly

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [1, Hq, T, D]; k, v: [1, Hkv, T, D] for the T packed tokens. Returns [1, Hq, T, D]."""
        qp = q[0].transpose(0, 1).contiguous()  # [T, Hq, D]
        kp = k[0].transpose(0, 1).contiguous()  # [T, Hkv, D]
        vp = v[0].transpose(0, 1).contiguous()
        return self.attend_packed(layer, qp, kp, vp).transpose(0, 1)[None]

    @property
    def fused_decode(self) -> bool:
        """Does this step's attention run as phase4_scheduler/decode_attention.py's one kernel? Decode-only steps of
        fewer than FUSED_DECODE_MAX_PAIRS (sequence, KV head) pairs, when the runner has the kernel."""
        r = self.runner
        return (self.decode_only and r.decode_attention_fn is not None
                and self.block_tables.shape[0] * r.config.num_key_value_heads < FUSED_DECODE_MAX_PAIRS)

    @property
    def rope_in_attention(self) -> bool:
        """True when attend_packed takes UN-rotated q, k plus positions (the fused decode kernel applies RoPE)."""
        return self.fused_decode

    def attend_packed(self, layer: int, qp: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor,
                      positions: torch.Tensor | None = None, cos_sin: torch.Tensor | None = None) -> torch.Tensor:
        """qp: [T, Hq, D]; kp, vp: [T, Hkv, D] (strided views are fine: unit stride in D). Returns [T, Hq, D].
        positions [T] and the cos/sin table: q and k are not rotated yet (only when rope_in_attention)."""
        r = self.runner
        kc, vc = r.k_cache[layer], r.v_cache[layer]  # [N, bs, Hkv, D]
        ks, vs = (None, None) if r.k_scale is None else (r.k_scale[layer], r.v_scale[layer])  # FP8: [N, bs, Hkv]
        if self.fused_decode:  # one kernel: (RoPE,) cache write, attention, split merge
            counters = r.decode_counters if r.decode_counters.numel() >= qp.shape[0] * kp.shape[1] else None
            return r.decode_attention_fn(qp, kp, vp, self.slot_mapping, kc, vc, self.block_tables, self.seq_lens,
                                         positions, cos_sin, counters=counters, k_scale=ks, v_scale=vs)
        if positions is not None:
            raise ValueError("attend_packed: positions are only taken when rope_in_attention is True")
        if self.decode_only and r.decode_fn is not None:
            r.write_fn(kp, vp, self.slot_mapping, kc, vc, ks, vs)
            out = r.decode_fn(qp, kc, vc, self.block_tables, self.seq_lens, ks, vs)  # [B=T, Hq, D]
        else:
            cu = self.cu_seqlens
            if cu is None:  # decode-only on the reference path: every sequence has one token
                cu = torch.arange(qp.shape[0] + 1, dtype=torch.int32, device=qp.device)
            extra = {"max_q_len": self.max_q_len} if r.backend == "triton" else {}
            if self.single is not None:
                extra["skip_single"] = True
            out = r.prefill_fn(qp, kp, vp, cu, self.seq_lens, self.block_tables, kc, vc, self.slot_mapping, ks, vs,
                               **extra)  # [T, Hq, D] (with skip_single: the one-token sequences' rows unwritten)
            if self.single is not None:  # their K/V are in the cache now: the decode kernel attends them
                rows, tables, lens = self.single
                out.index_copy_(0, rows, r.decode_fn(qp.index_select(0, rows), kc, vc, tables, lens, ks, vs))
        return out

    def advance(self, num_tokens: int) -> None:
        pass


class ModelRunner:
    def __init__(self, loaded, num_blocks: int, block_size: int = 16, backend: str = "auto",
                 cuda_graph: bool | None = None, max_num_seqs: int = 256, max_model_len: int | None = None,
                 fuse: bool = False, kv_cache_dtype: str = "auto", mixed_graph_tokens: int = 0,
                 mixed_graphs_full: bool = False):
        """`loaded`: a common.model_loader.LoadedModel (Llama family). `backend`: "triton", "ref" or "auto".
        `kv_cache_dtype`: "auto" (the model's dtype) or "fp8" (e4m3 K/V with an fp16 scale per token and KV head,
        phase 3's format: ~half the bytes; `kv_bytes_per_token` gives the size of either).
        `cuda_graph`: capture decode steps for batch sizes up to `max_num_seqs` (default: on with CUDA + Triton).
        `fuse`: swap the reference model for the fused one (phase4_scheduler/fused_model.py; consumes loaded.model;
        a model fused already, by an earlier engine over the same `loaded`, is reused as it is).
        `mixed_graph_tokens`: > 0 captures piecewise graphs for steps with a prefill, up to that many tokens
        (mixed_graphs.py; CUDA, fused model and decode graphs required); 0: such steps run eagerly.
        `mixed_graphs_full`: those graphs include attention, one per bucket (mixed_graphs.py's NOTE on full mode)."""
        cfg = loaded.config
        if cfg.is_mla:
            raise NotImplementedError("the phase-4 engine runs Llama-family models; MLA models need a latent paged "
                                      "cache in the runner (phase 2's PagedLatentCache), not wired in yet")
        if backend not in ("auto", "triton", "ref"):
            raise ValueError(f"backend must be 'auto', 'triton' or 'ref', got {backend!r}")
        self.model, self.config, self.device, self.dtype = loaded.model, cfg, loaded.device, loaded.dtype
        self.backend = ("triton" if self.device.type == "cuda" else "ref") if backend == "auto" else backend
        self.block_size, self.num_blocks = block_size, num_blocks
        # one extra block at index num_blocks: the scratch page that padded graph rows write to and read from
        shape = (cfg.num_hidden_layers, num_blocks + 1, block_size, cfg.num_key_value_heads, cfg.head_dim)
        if kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {kv_cache_dtype!r}")
        self.kv_cache_dtype = kv_cache_dtype
        fp8 = kv_cache_dtype == "fp8"
        self.k_cache = torch.zeros(shape, dtype=FP8 if fp8 else self.dtype, device=self.device)  # [L, N+1, bs, Hkv, D]
        self.v_cache = torch.zeros_like(self.k_cache)
        scale_shape = shape[:-1]  # [L, N+1, bs, Hkv]: one fp16 scale per token and KV head
        self.k_scale = torch.ones(scale_shape, dtype=SCALE_DTYPE, device=self.device) if fp8 else None
        self.v_scale = torch.ones_like(self.k_scale) if fp8 else None
        suffix = "" if self.backend == "triton" else "_ref"
        self.write_fn = artifacts.get("kv_cache.write" + suffix)
        self.prefill_fn = artifacts.get("attention.paged_prefill" + suffix)
        # the reference prefill handles decode rows exactly; the Triton decode kernel is faster for decode-only steps
        self.decode_fn = artifacts.get("attention.paged_decode") if self.backend == "triton" else None
        # decode-only steps: RoPE + cache write + attention + split merge in one kernel (decode_attention.py), unless
        # TITAN_DECODE_ATTENTION=unfused (the A/B switch of bench_latency's '+unfused' variant) or, over an FP8 cache,
        # TITAN_FP8_FUSED=0 (its FP8 path with the medium-batch plan beat the unfused kernels at every measured shape
        # on the H100: decode_attention.fused_plan)
        fold = (self.decode_fn is not None and (not fp8 or os.environ.get(FP8_FUSED_ENV, "1") != "0")
                and os.environ.get(DECODE_ENV, "fused") != "unfused"
                and cfg.head_dim >= 32 and not cfg.head_dim & (cfg.head_dim - 1))
        self.decode_attention_fn = artifacts.get("attention.decode_fused") if fold else None
        # its split-merge counters: zeroed once, left zeroed by every launch (so CUDA graphs can hold the pointer)
        self.decode_counters = torch.zeros(max_num_seqs * cfg.num_key_value_heads if fold else 0,
                                           dtype=torch.int32, device=self.device)
        self.max_model_len = max_model_len or cfg.max_position_embeddings
        self.mixed_attention = os.environ.get(MIXED_ATTENTION_ENV, "packed")
        if self.mixed_attention not in MIXED_ATTENTION_MODES:
            raise ValueError(f"{MIXED_ATTENTION_ENV}={self.mixed_attention!r}: expected one of {MIXED_ATTENTION_MODES}")
        if fuse:
            from phase4_scheduler.fused_model import FusedLlamaForCausalLM, fuse_model

            if not isinstance(loaded.model, FusedLlamaForCausalLM):  # a second engine over the same loaded model
                loaded.model = fuse_model(loaded.model, backend=self.backend)  # reuses the first one's fused model
            self.model = loaded.model
            if self.device.type == "cuda":
                self.model.warmup()  # autotuning must be over before any capture
        self.step_timer = StepTimer() if step_timing_enabled(self.device) else None  # TITAN_STEP_TIMING=1
        self.graphs = None
        self.graph_tokens = None  # (greedy tokens [B] on the device, their pinned host copy, its event) or None
        want = (self.device.type == "cuda" and self.backend == "triton") if cuda_graph is None else cuda_graph
        if want:
            from phase4_scheduler.cuda_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(self, max_num_seqs, self.max_model_len)
        self.mixed = None
        if mixed_graph_tokens and self.graphs is not None and hasattr(self.model, "forward_tokens"):  # fused model
            from phase4_scheduler.mixed_graphs import MixedGraphs

            self.mixed = MixedGraphs(self, mixed_graph_tokens, full=mixed_graphs_full)

    @property
    def null_block(self) -> int:
        return self.num_blocks

    def nbytes(self) -> int:
        """Bytes of the usable pool (the scratch block excluded), FP8 scales included."""
        n = 2 * self.k_cache[:, :self.num_blocks].numel() * self.k_cache.element_size()
        if self.k_scale is not None:
            n += 2 * self.k_scale[:, :self.num_blocks].numel() * self.k_scale.element_size()
        return n

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, ctx: BatchAttention,
                last: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        """ids, pos: [T] on the device; `last`: [B] row of each sequence's last token (None: every row).
        Returns float32 logits [B, V], converted into `out` when given (the same kernel as .float(), into a buffer
        that graphs of several sizes can share). Capturable: no host syncs, shapes fixed by T and B."""
        if hasattr(self.model, "forward_tokens"):  # the fused model (phase4_scheduler/fused_model.py)
            h = self.model.forward_tokens(ids, pos, ctx, select=last)  # [B, hidden], final norm applied
            if out is not None:  # at B=1 the lm_head GEMV stores fp32 itself: no conversion kernel in the graph
                return self.model.compute_logits(h, out=out)
            return self.model.compute_logits(h).float()
        m = self.model.model
        h = m.embed_tokens(ids[None])  # [1, T, hidden]
        cos, sin = m.rotary_emb(pos[None], h.dtype)
        for layer in m.layers:
            h = layer(h, cos, sin, ctx)
        h = m.norm(h[0] if last is None else h[0, last])  # [B, hidden]
        head = self.model.lm_head
        logits = F.linear(h, m.embed_tokens.weight) if head is None else head(h)
        return logits.float() if out is None else out.copy_(logits)  # [B, V]

    def execute(self, *args, **kwargs):
        """`_execute`, with its GPU time added to `step_timer`'s kind of step when timing is on (step_timer.py)."""
        if self.step_timer is None:
            return self._execute(*args, **kwargs)
        counts = [g.steps if g is not None else 0 for g in (self.graphs, self.mixed)]
        start = self.step_timer.begin()
        out = self._execute(*args, **kwargs)
        kind = ("decode_graph" if self.graphs is not None and self.graphs.steps != counts[0] else
                "mixed_graph" if self.mixed is not None and self.mixed.steps != counts[1] else "eager")
        self.step_timer.end(kind, start)
        return out

    @torch.inference_mode()
    def _execute(self, token_ids, positions, q_lens, seq_lens, block_tables, slot_mapping,
                 token_src: tuple[torch.Tensor, torch.Tensor] | None = None, extra_rows: list[int] | None = None):
        """One packed forward. Each argument is a Python list or a CPU tensor (block_tables: ragged lists or an int32
        [B, W] tensor padded with 0). Returns the logits of each sequence's LAST scheduled token: [B, V] (float32).
        `token_src` = (tokens [B'] long on the device, rows [B] long on the CPU): a decode-only step whose input ids
        are tokens[rows], gathered on the device (overlapped decode: the previous step's sampled tokens never went
        through the host); token_ids is then ignored. `token_src` = (tokens, rows [K], dst [K]) (overlapped mixed
        steps): token_ids holds every id but those at token positions dst, which are tokens[rows] (scattered on
        the device). `extra_rows`: token rows whose logits are wanted too (prompt logprobs): then returns
        (logits [B, V], their logits [len(extra_rows), V]), from an eager forward."""
        self.graph_tokens = None  # set by a decode graph that computed the step's greedy tokens (graph_io.py)
        q_lens_t = as_cpu_tensor(q_lens, torch.int32)
        b, max_q_len = q_lens_t.shape[0], int(q_lens_t.max())
        decode_only = max_q_len == 1
        scatter = token_src is not None and len(token_src) == 3
        if scatter and token_src[1].shape != token_src[2].shape:
            raise ValueError(f"token_src rows {tuple(token_src[1].shape)} and positions {tuple(token_src[2].shape)} "
                             "differ in shape")
        if token_src is not None and not scatter and (not decode_only or token_src[1].shape != (b,)):
            raise ValueError(f"token_src is for decode-only steps with one row index per sequence; got q_lens max "
                             f"{max_q_len}, {tuple(token_src[1].shape)} rows for {b} sequences")
        if decode_only and self.graphs is not None and self.graphs.fits(b) and extra_rows is None and not scatter:
            return self.graphs.run(token_ids, positions, seq_lens, block_tables, slot_mapping, token_src)
        dev = self.device
        cu = torch.zeros(b + 1, dtype=torch.int32)
        torch.cumsum(q_lens_t, 0, out=cu[1:])
        if (not decode_only and extra_rows is None and self.mixed is not None
                and self.mixed.fits_full(int(cu[-1]), b)):  # the whole step from one graph (full mixed graphs)
            return self.mixed.run_full(as_cpu_tensor(token_ids, torch.long), as_cpu_tensor(positions, torch.long),
                                       as_cpu_tensor(slot_mapping, torch.int64), cu,
                                       as_cpu_tensor(seq_lens, torch.int32), pad_tables(block_tables),
                                       (token_src[0], as_cpu_tensor(token_src[1], torch.long),
                                        as_cpu_tensor(token_src[2], torch.long)) if scatter else None)
        host = {"tables": pad_tables(block_tables), "lens": as_cpu_tensor(seq_lens, torch.int32),
                "slots": as_cpu_tensor(slot_mapping, torch.int64), "pos": as_cpu_tensor(positions, torch.long)}
        if not decode_only:
            host["cu"], host["last"] = cu, cu[1:].long() - 1
            if self.mixed_attention == "split" and self.decode_fn is not None:
                one = (q_lens_t == 1).nonzero()[:, 0]  # [S] the one-token sequences (decodes, a last prompt token)
                if one.numel():
                    host["one"], host["one_rows"] = one, cu[:-1][one].long()
        if token_src is None or scatter:
            host["ids"] = as_cpu_tensor(token_ids, torch.long)
        if token_src is not None:
            host["src_rows"] = as_cpu_tensor(token_src[1], torch.long)
            if scatter:
                host["src_dst"] = as_cpu_tensor(token_src[2], torch.long)
        if extra_rows is not None:  # the last rows, then the extra ones, in one lm_head call
            host["rows"] = torch.cat((cu[1:].long() - 1, torch.tensor(extra_rows, dtype=torch.long)))
        d = dict(zip(host, to_device(dev, *host.values())))  # one copy, no stream sync (step_inputs.to_device)
        tables, lens = d["tables"], d["lens"]
        single = None
        if "one" in d:
            single = (d["one_rows"], tables.index_select(0, d["one"]), lens.index_select(0, d["one"]))
        ctx = BatchAttention(self, tables, lens, d["slots"], d.get("cu"), max_q_len, single)
        if token_src is None or scatter:
            ids = d["ids"]  # [T]
            if scatter:  # the previous step's tokens at their positions, on the device
                ids.index_copy_(0, d["src_dst"], token_src[0].index_select(0, d["src_rows"]))
        else:
            ids = token_src[0].index_select(0, d["src_rows"])  # [T] = [B]: gathered on the device
        pos, last = d["pos"], d.get("last")  # [T], [B] (None: decode-only)
        if extra_rows is not None:
            logits = self.forward(ids, pos, ctx, d["rows"])
            return logits[:b], logits[b:]
        if not decode_only and self.mixed is not None and self.mixed.fits(ids.shape[0]):
            return self.mixed.run(ids, pos, ctx, last)  # everything but attention from graphs
        return self.forward(ids, pos, ctx, last)

    def step_shapes(self) -> dict:
        """Running totals of the steps that replayed graphs: decode graphs (rows, and the sizes they were padded to)
        and mixed-step graphs (tokens, and their buckets), and with TITAN_STEP_TIMING=1 the GPU milliseconds of each
        kind of step (step_timer.py; "eager" = neither graph); a difference of two snapshots describes the steps
        between them (bench_equal_latency records it per point)."""
        out = {}
        for name, g in (("decode_graph", self.graphs), ("mixed_graph", self.mixed)):
            if g is not None:
                out.update({f"{name}_steps": g.steps, f"{name}_tokens": g.tokens,
                            f"{name}_padded_tokens": g.padded_tokens})
        if self.step_timer is not None:  # GPU time per kind of step (TITAN_STEP_TIMING=1)
            out.update(self.step_timer.totals())
        return out

    def __repr__(self) -> str:
        L, N, bs, H, D = self.k_cache.shape
        g = f", {self.graphs}" if self.graphs is not None else ""
        g += f", {self.mixed}" if self.mixed is not None else ""
        return (f"ModelRunner(backend={self.backend}, device={self.device}, dtype={self.dtype}, KV pool {N - 1} "
                f"blocks x {bs} tokens x {L} layers, {self.nbytes() / 2**20:.1f} MiB{g})")
