"""CUDA graphs for steps that carry a prefill ("piecewise" graphs): everything but attention replays from graphs.

A decode-only step replays one graph (cuda_graphs.py). A step with a prefill chunk in it cannot: its attention
depends on how the tokens split into sequences (cu_seqlens, the longest query), so until now it ran eagerly, one
Python launch per kernel: for a 30-layer model ~300 launches, milliseconds of host time per step, and under load
(a prefill arriving every step or two) most steps are such steps. Everything else in a layer -- norms, projections,
RoPE, SiLU -- works row by row on the T packed tokens and depends only on T. So, per bucket of T (token_buckets:
16, 32, ..., 256, 320, 384, ..., the step budget), the fused model is captured as L + 1 graphs cut at the attentions:

    graph 0:      embed -> layer 0 pre-attention (add+norm, qkv, RoPE)                 -> qkv, residual buffers
    attention 0:  eager: ctx.attend_packed(0, q, k, v) on the real T rows            -> attention buffer
    graph i:      layer i-1 post-attention (o, add+norm, gate_up, SiLU, down) -> layer i pre-attention
    ...
    graph L:      layer L-1 post-attention -> final norm                               -> hidden buffer
    eager:        logits of each sequence's last row

NOTE (why padding rows are harmless): a step of T tokens uses the bucket t >= T; rows T..t of the static buffers
hold token 0 at position 0 or an earlier step's values. Every captured op is row-wise (a GEMM's row i reads only
row i of its input), so they never touch the real rows, and attention only ever sees rows [:T]. The graphs talk
through static buffers (ids, positions, hidden, residual, qkv, attention output) sliced [:t] from one allocation
of the largest bucket, so all buckets share them and one memory pool; each graph's temporaries are freed when its
capture ends, so the pool holds about one segment's worth per bucket.
Only for the fused model (FusedLlamaForCausalLM: its layers expose pre_attention / post_attention).

NOTE (full mode, `full=True`; the engine's default since the H100 measured it on 2026-12-06: engine._mixed_graphs):
the piecewise graphs still launch each layer's attention from Python (a graph replay, the cache write, the
attention kernel and a copy: ~90 launches and their Python for TinyLlama's 22 layers, every step that carries a
prompt). Phase 3's prefill
kernel now has a flat grid, T // BQ + B programs per KV head, so its launch depends only on the bucket's T and the
number of sequences. With the sequences padded to the decode graphs' batch (empty ones: cu_seqlens stays at the
real token count) and the padding rows writing the scratch slot, the WHOLE step, attention included, is one graph
per bucket over static buffers (ids, positions, slots, cu_seqlens, seq_lens, block tables, last rows). Rows past
the real tokens belong to no sequence: their attention output is never written and never read (row-wise ops
only). Its price: the logits of every padded sequence (lm_head over the batch size) and, per step, seven device
copies into the static buffers.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F


FINE_FROM, FINE_UNTIL, STEPS_PER_OCTAVE = 256, 8192, 4


def token_buckets(max_tokens: int, smallest: int = 16) -> list[int]:
    """16, 32, 64, 128, 256, then four buckets an octave (320, 384, 448, 512, 640, ... 8192: a step pads by < 25%),
    powers of two beyond 8,192 tokens, and max_tokens itself.

    NOTE (why four an octave): every captured op is a GEMM over the bucket's rows, so a step pays for its bucket,
    not its tokens. Serving at 512 seats a typical step carries ~450 decode rows and one or two ~109-token prompts:
    ~625 tokens, which powers of two alone pad to 1,024 -- 64% more GEMM work, ~1 ms a step on the H200 at
    ~750 TFLOP/s (TinyLlama: 1.94 GFLOP a token), about the part of those steps' time the README's arithmetic
    could not account for. With four an octave it is 640. A bucket costs L + 1 graph captures (the 10 buckets of
    an 8,192 budget took 0.2 s, the 17 of the static baseline's 2^20 6.7 s, on the H200; the engine now caps the
    capture at engine.MIXED_GRAPH_MAX_TOKENS) and no static buffers of its own: all buckets share the largest
    one's buffers and one graph pool (captured largest first)."""
    if max_tokens < 2:
        raise ValueError(f"mixed-step graphs need a step budget of at least 2 tokens, got {max_tokens}")
    out, t = [], smallest
    while t < max_tokens:
        out.append(t)
        if FINE_FROM <= t < FINE_UNTIL:
            out += [t + j * t // STEPS_PER_OCTAVE for j in range(1, STEPS_PER_OCTAVE)]
        t *= 2
    return sorted({b for b in out if b < max_tokens}) + [max_tokens]


class MixedGraphs:
    def __init__(self, runner, max_tokens: int, capture: bool = True, full: bool = False):
        """`capture=False` keeps the static buffers and the segmenting but runs each segment eagerly (the CPU tests
        check the plumbing that way). `full`: one graph per bucket, attention included (module NOTE; `run_full`)."""
        model = runner.model
        if not hasattr(model, "layers") or not all(hasattr(l, "post_attention") for l in model.layers):
            raise TypeError("mixed-step graphs need the fused model (ModelRunner(..., fuse=True))")
        if capture and runner.device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA device; the runner is on {runner.device}")
        self.runner, self.model = runner, model
        self.buckets = token_buckets(max_tokens)
        cfg, dev, dt = model.config, runner.device, runner.dtype
        top = self.buckets[-1]
        nqkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
        self.ids = torch.zeros(top, dtype=torch.long, device=dev)
        self.pos = torch.zeros(top, dtype=torch.long, device=dev)
        self.h = torch.zeros(top, cfg.hidden_size, dtype=dt, device=dev)
        self.res = torch.zeros_like(self.h)
        self.qkv = torch.zeros(top, nqkv, dtype=dt, device=dev)
        self.attn = torch.zeros(top, cfg.num_attention_heads * cfg.head_dim, dtype=dt, device=dev)
        self.segments: dict[int, list] = {}
        self.steps = self.tokens = self.padded_tokens = 0  # replays, their real tokens, their buckets' tokens
        self.full = full
        if full:
            if runner.graphs is None or runner.mixed_attention != "packed":
                raise ValueError("full mixed-step graphs need the decode graphs (their batch size and table width) "
                                 "and TITAN_MIXED_ATTENTION=packed")
            self.max_seqs, width = runner.graphs.max_batch, runner.graphs.width
            self.cu = torch.zeros(self.max_seqs + 1, dtype=torch.int32, device=dev)
            self.lens = torch.zeros(self.max_seqs, dtype=torch.int32, device=dev)
            self.tables = torch.zeros(self.max_seqs, width, dtype=torch.int32, device=dev)
            # the scratch slot until a step fills them: the warm-up and capture runs write K/V there, not to block 0
            self.slots = torch.full((top,), runner.null_block * runner.block_size, dtype=torch.long, device=dev)
            self.last = torch.zeros(self.max_seqs, dtype=torch.long, device=dev)
            # every bucket's graph converts its logits into this one buffer (not a [max_seqs, V] fp32 tensor per
            # bucket: ~29 x 65 MB at 512 seats); a step's sampler reads them before the next step is launched
            self.logits = torch.empty(self.max_seqs, cfg.vocab_size, dtype=torch.float32, device=dev)
        self.graphs: list = []  # keeps every captured graph alive
        t0, pool = time.perf_counter(), None
        for t in reversed(self.buckets):  # largest first: the smaller buckets reuse its pool
            fns = [self._full_fn(t)] if full else self._segment_fns(t)
            if not capture:
                self.segments[t] = fns
                continue
            replays = []
            with torch.inference_mode():
                for fn in fns:
                    fn()  # warm-up outside the capture (cuBLAS handles, Triton compiles)
                torch.cuda.synchronize()
                for fn in fns:
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g, pool=pool):
                        fn()
                    pool = g.pool() if pool is None else pool
                    self.graphs.append(g)
                    replays.append(g.replay)
            self.segments[t] = replays
        if capture:
            torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - t0

    def _segment_fns(self, t: int) -> list:
        m, ops = self.model, self.model.ops
        ids, pos, h, res, qkv, attn = (x[:t] for x in (self.ids, self.pos, self.h, self.res, self.qkv, self.attn))
        layers = m.layers

        def first():
            x = F.embedding(ids, m.embed)
            q, r = layers[0].pre_attention(x, None, pos, m.cos_sin, ops)
            qkv.copy_(q)
            res.copy_(r)

        def middle(i):
            def fn():
                x, r = layers[i - 1].post_attention(attn, res, ops)
                q, r = layers[i].pre_attention(x, r, pos, m.cos_sin, ops)
                qkv.copy_(q)
                res.copy_(r)
            return fn

        def last():
            x, r = layers[-1].post_attention(attn, res, ops)
            h.copy_(ops.rms_norm(x, m.norm, m.config.rms_norm_eps, r)[0])

        return [first] + [middle(i) for i in range(1, len(layers))] + [last]

    def _full_fn(self, t: int):
        """The whole forward of a bucket-t step over the static buffers (full mode): logits [max_seqs, V]."""
        from phase4_scheduler.model_runner import BatchAttention

        r = self.runner
        ctx = BatchAttention(r, self.tables, self.lens, self.slots[:t], self.cu, max(t, 2))
        ids, pos = self.ids[:t], self.pos[:t]
        return lambda: r.forward(ids, pos, ctx, self.last, out=self.logits)

    def fits(self, num_tokens: int) -> bool:
        return num_tokens <= self.buckets[-1]

    def fits_full(self, num_tokens: int, num_seqs: int) -> bool:
        return self.full and num_tokens <= self.buckets[-1] and num_seqs <= self.max_seqs

    def run_full(self, ids, pos, slots, cu, lens, tables, scatter=None) -> torch.Tensor:
        """One step with a prefill through its bucket's full graph. CPU tensors: ids, pos, slots [T] int64, cu [B+1]
        int32, lens [B] int32, tables [B, W] int32; `scatter` = (tokens on the device, rows [K], dst [K] on the CPU):
        ids[dst] = tokens[rows] on the device (overlapped mixed steps). Returns float32 logits [B, V]."""
        from phase4_scheduler.step_inputs import to_device

        r, n, b = self.runner, ids.shape[0], lens.shape[0]
        t = next(x for x in self.buckets if x >= n)
        if tables.shape[1] > self.tables.shape[1]:
            raise ValueError(f"a block table has {tables.shape[1]} blocks; the graphs hold {self.tables.shape[1]} "
                             "(max_model_len)")
        m = self.max_seqs
        ids_p, pos_p = torch.zeros(t, dtype=torch.long), torch.zeros(t, dtype=torch.long)
        slots_p = torch.full((t,), r.null_block * r.block_size, dtype=torch.long)  # padding rows: the scratch slot
        ids_p[:n], pos_p[:n], slots_p[:n] = ids, pos, slots
        cu_p = torch.full((m + 1,), n, dtype=torch.int32)  # the padded sequences are empty
        cu_p[:b + 1] = cu
        lens_p, last_p = torch.zeros(m, dtype=torch.int32), torch.zeros(m, dtype=torch.long)
        lens_p[:b], last_p[:b] = lens, cu[1:].long() - 1
        extra = () if scatter is None else (scatter[1], scatter[2])
        d = to_device(r.device, ids_p, pos_p, slots_p, cu_p, lens_p, last_p, tables, *extra)
        for dst, src in zip((self.ids[:t], self.pos[:t], self.slots[:t], self.cu, self.lens, self.last), d):
            dst.copy_(src)
        self.tables[:b, :tables.shape[1]].copy_(d[6])
        if scatter is not None:  # the previous step's tokens at their positions, on the device
            self.ids.index_copy_(0, d[8], scatter[0].index_select(0, d[7]))
        self.steps, self.tokens, self.padded_tokens = self.steps + 1, self.tokens + n, self.padded_tokens + t
        self.segments[t][0]()  # the bucket's graph (capture=False: the same forward), logits into self.logits
        return self.logits[:b]

    def run(self, ids: torch.Tensor, pos: torch.Tensor, ctx, last: torch.Tensor) -> torch.Tensor:
        """ids, pos [T] on the device, ctx: the step's BatchAttention, last [B]: each sequence's last row. Returns
        float32 logits [B, V]."""
        n = ids.shape[0]
        t = next(b for b in self.buckets if b >= n)
        self.ids[:n].copy_(ids)
        self.pos[:n].copy_(pos)
        if t > n:
            self.ids[n:t].zero_()
            self.pos[n:t].zero_()
        self.steps, self.tokens, self.padded_tokens = self.steps + 1, self.tokens + n, self.padded_tokens + t
        layers, segs = self.model.layers, self.segments[t]
        qkv, attn = self.qkv[:n], self.attn[:n]
        for i, seg in enumerate(segs):
            seg()
            if i < len(layers):
                q, k, v = layers[i].split_qkv(qkv)
                attn.copy_(ctx.attend_packed(i, q, k, v).reshape(n, -1))
        return self.model.compute_logits(self.h[:n][last]).float()

    def __repr__(self) -> str:
        each = "1 graph each, attention inside (full)" if self.full else f"{len(self.model.layers) + 1} graphs each"
        return (f"MixedGraphs({len(self.buckets)} token buckets {self.buckets[0]}..{self.buckets[-1]}, {each}, "
                f"captured in {self.capture_seconds:.1f} s)")
