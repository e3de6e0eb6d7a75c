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
    def __init__(self, runner, max_tokens: int, capture: bool = True):
        """`capture=False` keeps the static buffers and the segmenting but runs each segment eagerly (the CPU tests
        check the plumbing that way)."""
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
        self.graphs: list = []  # keeps every captured graph alive
        t0, pool = time.perf_counter(), None
        for t in reversed(self.buckets):  # largest first: the smaller buckets reuse its pool
            fns = self._segment_fns(t)
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

    def fits(self, num_tokens: int) -> bool:
        return num_tokens <= self.buckets[-1]

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
        return (f"MixedGraphs({len(self.buckets)} token buckets {self.buckets[0]}..{self.buckets[-1]}, "
                f"{len(self.model.layers) + 1} graphs each, captured in {self.capture_seconds:.1f} s)")
