"""The fused Llama forward: packed qkv and gate_up weights, fused add+RMSNorm, in-place RoPE, SiLU-and-mul, and the
skinny GEMM for decode-sized steps with the norm and SiLU folded into it. Same numbers as common/llama.py (fp32: to
rounding); a decode layer is 5 launches (norm+qkv, the runner's one-kernel decode attention with RoPE in it, o,
norm+gate_up+silu, down), or 5 + the unfused attention's rope/write/decode/reduce. See FUSED.md.

CONTRACT (what the model runner calls):

    fused = fuse_model(loaded.model)          # consumes the reference model: its layers move into `fused`
    loaded.model = fused                      # the reference's projection weights are freed, not copied

    h = fused.forward_tokens(input_ids, positions, ctx)  # ids, positions [T] (long/int32) -> hidden [T, hidden],
                                                         # final norm applied; `select=` [B] long rows it keeps first
    logits = fused.compute_logits(h)                     # [B, hidden] -> [B, V] in the model dtype (lm_head or tied)

  `ctx` is the runner's attention context. forward_tokens calls `ctx.attend_packed(layer, q [T, Hq, D],
  k [T, Hkv, D], v [T, Hkv, D]) -> [T, Hq, D]` when ctx has that method (no transposes: q, k, v are strided views
  of the qkv buffer, last dim contiguous; when `ctx.rope_in_attention` is True, q and k are NOT rotated and the call
  is `ctx.attend_packed(layer, q, k, v, positions, cos_sin)`: the runner's fused decode kernel rotates them), else `ctx.attend(layer, q [1, Hq, T, D], k, v) -> [1, Hq, T, D]` exactly
  as common/llama.py does; it never calls ctx.advance. `fused(input_ids [B, S], positions=None, cache=None,
  last_only=False)` keeps LlamaForCausalLM's call (logits [B, S, V]; cache.advance(S) at the end), so a
  ContiguousKVCache or no cache works too.

CUDA graphs: no host syncs, no data-dependent shapes; positions are read on the device from a cos/sin table of
`max_positions` rows (positions beyond it are not checked). The skinny GEMM autotunes (compiles and times each
candidate tile, once per process) at its first call per (N, K, M == 1 or not, prologue): call `fused.warmup()`
BEFORE capturing graphs.
Which path a step takes is decided on the host from T alone (T <= sg.SKINNY_MAX_M, i.e. T == 1: skinny GEMMs), so one
captured graph per T stays valid.

NOTE (the residual stream): each layer returns (h, residual) un-added; the next norm adds them while it normalises
(vLLM's fused_add_rms_norm), so the residual add costs no launch and no extra pass over memory.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.attention import attention_ref
from common.llama import batch_positions
from phase4_scheduler import fused_kernels as fk
from phase4_scheduler import skinny_gemm as sg


# The SiLU-and-mul in the gate_up GEMV's epilogue (skinny_gemm.norm_linear_silu) instead of the down projection's
# prologue. NOTE (why): the prologue recomputes silu(gate) * up over all I columns in every one of the down GEMV's
# programs, ~1.2 us of the H100's 10.2 us silu+down against 9.0 us for the plain GEMV (fused_kernels_s1207e_h100);
# in the epilogue each gate/up pair is computed once, by the program that produced it.
SILU_EPILOGUE_ENV = "TITAN_SILU_EPILOGUE"


class Ops:
    """The five operations a fused layer uses, for one backend: 'ref' (PyTorch) or 'triton' (the kernels). With
    `prologues` the Triton path folds the norm into the next GEMM and SiLU-and-mul into the down projection whenever
    the step is skinny (T <= sg.SKINNY_MAX_M, decode); larger steps run norm, silu_mul and cuBLAS separately."""

    def __init__(self, backend: str, prologues: bool = True, rope_epilogue: bool = False,
                 silu_epilogue: bool | None = None):
        self.backend, self.prologues, self.rope_epilogue = backend, prologues, rope_epilogue
        self.silu_epilogue = silu_epilogue  # None: on unless TITAN_SILU_EPILOGUE=0 (see silu_epilogue_on)
        ref = backend == "ref"
        self.rms_norm = fk.rms_norm_ref if ref else fk.rms_norm
        self.silu_mul = fk.silu_mul_ref if ref else fk.silu_mul
        self.rope_qk = fk.rope_qk_ref if ref else fk.rope_qk
        self.linear = F.linear if ref else sg.linear

    def _skinny(self, x: torch.Tensor) -> bool:
        return (self.backend == "triton" and self.prologues and (x.is_cuda or fk.interpreting())
                and 1 <= x.shape[0] <= sg.SKINNY_MAX_M)

    def norm_linear(self, h, norm_w, eps, w, residual):
        """(linear(rms_norm(h + residual) * norm_w, w), h + residual); residual None means h is the stream."""
        if self._skinny(h):
            return sg.norm_linear(h, norm_w, eps, w, residual)
        if residual is None:
            return self.linear(self.rms_norm(h, norm_w, eps), w), h
        x, residual = self.rms_norm(h, norm_w, eps, residual)
        return self.linear(x, w), residual

    def norm_qkv_rope(self, h, norm_w, eps, w, residual, positions, cos_sin, hq, hkv, d):
        """(rope(norm_linear(...)), h + residual): with rope_epilogue and a skinny step, one kernel."""
        if self.rope_epilogue and self._skinny(h):
            return sg.norm_linear_rope(h, norm_w, eps, w, positions, cos_sin, hq, hkv, d, residual)
        qkv, residual = self.norm_linear(h, norm_w, eps, w, residual)
        return self.rope_qk(qkv, positions, cos_sin, hq, hkv, d), residual

    def silu_mul_linear(self, gate_up, w):
        return sg.silu_mul_linear(gate_up, w) if self._skinny(gate_up) else self.linear(self.silu_mul(gate_up), w)

    def silu_epilogue_on(self) -> bool:
        """SILU_EPILOGUE_ENV ('0' / '1'), else the attribute (None: on). Read per call, like the kernels' switches:
        a CUDA graph keeps what was set when it was captured."""
        return sg.env_switch(SILU_EPILOGUE_ENV, self.silu_epilogue is not False)

    def mlp(self, x, norm_w, eps, w_gate_up, w_down, residual):
        """(down(silu_mul(norm_linear(x + residual) @ gate_up)), x + residual). A skinny step with the SiLU epilogue
        on: norm + gate_up + SiLU-and-mul in one kernel, then a plain GEMV (the down projection's prologue would
        compute the same act, bit for bit, once per program); otherwise norm + gate_up, then silu + down."""
        if self.silu_epilogue_on() and self._skinny(x):
            act, residual = sg.norm_linear_silu(x, norm_w, eps, w_gate_up, residual)
            return sg.linear(act, w_down), residual
        gate_up, residual = self.norm_linear(x, norm_w, eps, w_gate_up, residual)
        return self.silu_mul_linear(gate_up, w_down), residual


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach(), requires_grad=False)


class FusedDecoderLayer(nn.Module):
    def __init__(self, layer, cfg, idx: int):
        super().__init__()
        a, mlp = layer.self_attn, layer.mlp
        self.idx, self.eps = idx, cfg.rms_norm_eps
        self.hq, self.hkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.input_norm = _frozen(layer.input_layernorm.weight)
        self.post_norm = _frozen(layer.post_attention_layernorm.weight)
        self.qkv = _frozen(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))  # [(Hq+2Hkv)D, H]
        del a.q_proj, a.k_proj, a.v_proj  # free the originals now: peak memory is one extra layer, not a model
        self.o = _frozen(a.o_proj.weight)  # [H, Hq*D]
        self.gate_up = _frozen(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))  # [2I, H]
        del mlp.gate_proj, mlp.up_proj
        self.down = _frozen(mlp.down_proj.weight)  # [H, I]

    def forward(self, h, residual, positions, cos_sin, ctx, b: int, s: int, ops):
        """h, residual [T, H] (residual None in layer 0) -> (mlp output, residual stream) [T, H], not yet added."""
        fold = getattr(ctx, "rope_in_attention", False)  # the runner's decode kernel rotates q and k itself
        qkv, residual = self.pre_attention(h, residual, positions, cos_sin, ops, rotate=not fold)
        q, k, v = self.split_qkv(qkv)
        t = qkv.shape[0]
        if fold:
            attn = ctx.attend_packed(self.idx, q, k, v, positions, cos_sin)
        else:
            attn = self._attend(q, k, v, ctx, b, s)
        return self.post_attention(attn.reshape(t, self.hq * self.d), residual, ops)

    def pre_attention(self, h, residual, positions, cos_sin, ops, rotate: bool = True):
        """(add + RMSNorm + qkv projection (+ RoPE when `rotate`), the residual stream): [T, (Hq+2Hkv)D], [T, H]."""
        if not rotate:
            return ops.norm_linear(h, self.input_norm, self.eps, self.qkv, residual)
        return ops.norm_qkv_rope(h, self.input_norm, self.eps, self.qkv, residual, positions, cos_sin, self.hq,
                                 self.hkv, self.d)

    def split_qkv(self, qkv):
        """q [T, Hq, D], k, v [T, Hkv, D]: strided views of the packed buffer."""
        t, nq, nk = qkv.shape[0], self.hq * self.d, self.hkv * self.d
        return (qkv[:, :nq].view(t, self.hq, self.d), qkv[:, nq:nq + nk].view(t, self.hkv, self.d),
                qkv[:, nq + nk:].view(t, self.hkv, self.d))

    def post_attention(self, attn, residual, ops):
        """attn [T, Hq*D] -> (o projection, add + RMSNorm, gate_up, SiLU-and-mul, down): (mlp output, residual)."""
        return ops.mlp(ops.linear(attn, self.o), self.post_norm, self.eps, self.gate_up, self.down, residual)

    def _attend(self, q, k, v, ctx, b, s):
        if hasattr(ctx, "attend_packed"):
            return ctx.attend_packed(self.idx, q, k, v)  # [T, Hq, D]
        q4, k4, v4 = (x.view(b, s, x.shape[1], self.d).transpose(1, 2) for x in (q, k, v))  # [B, H, S, D]
        out = attention_ref(q4, k4, v4) if ctx is None else ctx.attend(self.idx, q4, k4, v4)
        return out.transpose(1, 2)  # [B, S, Hq, D]


class FusedLlamaForCausalLM(nn.Module):
    def __init__(self, model, backend: str = "auto", max_positions: int | None = None, prologues: bool = True,
                 rope_epilogue: bool = False):
        super().__init__()
        from common.llama import Attention, LlamaForCausalLM

        if not isinstance(model, LlamaForCausalLM) or any(not isinstance(l.self_attn, Attention)
                                                           for l in model.model.layers):
            raise TypeError(f"fuse_model takes a common.llama.LlamaForCausalLM with Llama attention, "
                            f"got {type(model).__name__}")
        if not len(model.model.layers):
            raise ValueError("fuse_model: the model has no layers (was it fused already?)")
        if backend not in ("auto", "triton", "ref"):
            raise ValueError(f"backend must be 'auto', 'triton' or 'ref', got {backend!r}")
        cfg = self.config = model.config
        m = model.model
        dev = m.embed_tokens.weight.device
        self.backend = ("triton" if dev.type == "cuda" else "ref") if backend == "auto" else backend
        self.ops = Ops(self.backend, prologues, rope_epilogue)
        self.embed = _frozen(m.embed_tokens.weight)  # [V, H]
        self.layers = nn.ModuleList(FusedDecoderLayer(l, cfg, i) for i, l in enumerate(m.layers))
        m.layers = nn.ModuleList()  # the reference model is consumed: its layers live here now
        self.norm = _frozen(m.norm.weight)
        self.lm_head = None if model.lm_head is None else _frozen(model.lm_head.weight)  # [V, H]; None: tied
        self.register_buffer("cos_sin", fk.make_cos_sin_cache(cfg, max_positions or cfg.max_position_embeddings,
                                                              dev), persistent=False)  # [P, D] fp32

    def forward_tokens(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx=None,
                       select: torch.Tensor | None = None, batch_shape: tuple[int, int] | None = None):
        """input_ids, positions [T] -> final-normed hidden [T, H] (or [len(select), H] rows `select` of it)."""
        if input_ids.dim() != 1 or positions.shape != input_ids.shape:
            raise ValueError(f"forward_tokens wants input_ids and positions [T], got {tuple(input_ids.shape)} and "
                             f"{tuple(positions.shape)}")
        b, s = batch_shape or (1, input_ids.shape[0])
        h, residual = F.embedding(input_ids, self.embed), None  # [T, H]
        for layer in self.layers:
            h, residual = layer(h, residual, positions, self.cos_sin, ctx, b, s, self.ops)
        if select is not None:
            h, residual = h[select], residual[select]
        return self.ops.rms_norm(h, self.norm, self.config.rms_norm_eps, residual)[0]

    def compute_logits(self, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """h [N, H] -> logits [N, V] (model dtype): the skinny GEMM for small N, cuBLAS otherwise. out: an fp32
        [N, V] buffer to receive them converted (.float()'s values); at N = 1 the GEMV stores them itself."""
        w = self.embed if self.lm_head is None else self.lm_head
        if out is None:
            return self.ops.linear(h, w)
        if self.ops.backend == "triton":
            return sg.linear(h, w, out=out)
        return out.copy_(self.ops.linear(h, w))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, cache=None,
                last_only: bool = False) -> torch.Tensor:
        """LlamaForCausalLM's call: input_ids [B, S] -> logits [B, S, V] ([B, 1, V] with last_only)."""
        b, s, positions = batch_positions(input_ids, positions, cache)
        select = torch.arange(b, device=input_ids.device) * s + s - 1 if last_only else None
        h = self.forward_tokens(input_ids.reshape(-1), positions.reshape(-1), cache, select, (b, s))
        if cache is not None:
            cache.advance(s)
        return self.compute_logits(h).view(b, 1 if last_only else s, -1)

    @torch.inference_mode()
    def warmup(self, max_tokens: int = sg.SKINNY_MAX_M) -> None:
        """Forward + logits at T=1 and T=max_tokens (no cache), so Triton's autotuning is over before a CUDA graph is
        captured. Call it again after changing `self.ops` switches (each path tunes its own kernels)."""
        dev = self.embed.device
        for t in sorted({1, max_tokens}):
            h = self.forward_tokens(torch.zeros(t, dtype=torch.long, device=dev), torch.arange(t, device=dev))
            self.compute_logits(h)

    def __repr__(self) -> str:
        c = self.config
        return (f"FusedLlamaForCausalLM(backend={self.backend}, prologues={self.ops.prologues}, "
                f"rope_epilogue={self.ops.rope_epilogue}, layers={len(self.layers)}, hidden={c.hidden_size}, "
                f"heads={c.num_attention_heads}q/{c.num_key_value_heads}kv x {c.head_dim}, "
                f"qkv {tuple(self.layers[0].qkv.shape)}, gate_up {tuple(self.layers[0].gate_up.shape)}, "
                f"{'tied' if self.lm_head is None else 'untied'} lm_head, rope table {tuple(self.cos_sin.shape)})")


def fuse_model(model, backend: str = "auto", max_positions: int | None = None, prologues: bool = True,
               rope_epilogue: bool = False) -> FusedLlamaForCausalLM:
    """Turn a reference LlamaForCausalLM into the fused model (weights moved, not copied; `model` is consumed).

    backend: "triton" (kernels; on CPU only under TRITON_INTERPRET=1), "ref" (PyTorch references), "auto" (triton on
    CUDA, ref elsewhere). max_positions: rows of the RoPE table (default: the config's max_position_embeddings).
    prologues: fold norm and SiLU-and-mul into the skinny GEMMs at decode sizes (False: separate kernels).
    rope_epilogue: also rotate q and k in the qkv GEMM's epilogue at decode sizes (one launch fewer per layer; off
    until bench_fused has shown it on the GPU). Both switches are attributes of `fused.ops`, changeable later.
    """
    return FusedLlamaForCausalLM(model, backend, max_positions, prologues, rope_epilogue).eval()
