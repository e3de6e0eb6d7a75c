"""The reference Llama forward pass in plain PyTorch: the oracle and the CPU path.

It computes what HF transformers' LlamaForCausalLM computes (RMSNorm in fp32, RoPE in the half-rotation layout
with rope_theta and rope_scaling, GQA, SwiGLU, optionally tied embeddings) with HF's parameter names, so an HF
state dict loads as is and logits agree to float32 rounding.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.attention import attention_ref
from common.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_inv_freq(cfg: ModelConfig, head_dim: int | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [D/2] and the attention scaling factor, for rope_scaling None/linear/llama3/yarn-free."""
    d = head_dim or cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    sc = cfg.rope_scaling or {}
    kind = sc.get("rope_type", sc.get("type", "default"))
    if kind in ("default", None):
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / sc["factor"], 1.0
    if kind == "llama3":
        factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
        old_len = sc["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / lo, old_len / hi
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(is_medium, smoothed, scaled), 1.0
    raise NotImplementedError(f"rope_scaling type {kind!r} is not supported by the Llama reference")


class RotaryEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inv_freq, self.attention_scaling = rope_inv_freq(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, S] -> cos, sin [B, S, D], computed in fp32 as HF does, then cast."""
        freqs = positions[..., None].float() * self.inv_freq.float()  # [B, S, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(dtype), (emb.sin() * self.attention_scaling).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, S, D]; cos, sin: [B, S, D] (half-rotation layout)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)

    def forward(self, x, cos, sin, cache=None):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)  # [B, Hq, S, D]
        k = self.k_proj(x).view(b, s, self.n_kv, self.head_dim).transpose(1, 2)  # [B, Hkv, S, D]
        v = self.v_proj(x).view(b, s, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attention_ref(q, k, v) if cache is None else cache.attend(self.layer_idx, q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x)). Other families pass their own attention."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, self_attn: nn.Module | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = self_attn if self_attn is not None else Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg)


def batch_positions(input_ids: torch.Tensor, positions: torch.Tensor | None, cache) -> tuple[int, int, torch.Tensor]:
    """Check input_ids [B, S]; default positions continue the cache (0.. without one). Returns (B, S, positions)."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    b, s = input_ids.shape
    if positions is None:
        start = cache.seq_len if cache is not None else 0
        positions = torch.arange(start, start + s, device=input_ids.device).expand(b, s)
    return b, s, positions


class LlamaForCausalLM(nn.Module):
    """model(input_ids [B, S], positions [B, S] | None, cache | None) -> logits [B, S, V]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, cache=None,
                last_only: bool = False) -> torch.Tensor:
        b, s, positions = batch_positions(input_ids, positions, cache)
        h = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(positions, h.dtype)
        for layer in self.model.layers:
            h = layer(h, cos, sin, cache)
        if cache is not None:
            cache.advance(s)
        h = self.model.norm(h[:, -1:] if last_only else h)
        return F.linear(h, self.model.embed_tokens.weight) if self.lm_head is None else self.lm_head(h)

    def make_cache(self, batch_size: int, max_len: int, dtype: torch.dtype, device) -> "ContiguousKVCache":
        """The KV cache this model family uses (the engine asks the model, so MLA models get a latent cache)."""
        from common.kv_cache import ContiguousKVCache

        return ContiguousKVCache(self.config, batch_size, max_len, dtype=dtype, device=device)

    @classmethod
    def from_state_dict(cls, cfg: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> "LlamaForCausalLM":
        """Build on the meta device and take the tensors as they are: no second copy of the weights."""
        with torch.device("meta"):
            model = cls(cfg)
        state = {k: v for k, v in state.items() if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
        missing = set(model.state_dict()) - set(state)
        unexpected = set(state) - set(model.state_dict())
        if missing or unexpected:
            raise ValueError(f"state dict does not fit the config: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
        state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
        model.load_state_dict(state, assign=True)
        model.model.rotary_emb = RotaryEmbedding(cfg).to(device)
        return model.eval()
