"""The reference DeepSeek-V3 forward pass in plain PyTorch: MLA attention (naive and absorbed), YaRN RoPE, dense MLP.

It computes what HF transformers' DeepseekV3ForCausalLM computes, with HF's parameter names, so an HF state dict loads
as is. MoE layers (index >= first_k_dense_replace) arrive in phase 6; until then configs keep every layer dense.

MLA in one picture (per token, per layer):

    x ──q_a_proj──RMSNorm──q_b_proj──► q = [q_nope (dn) | q_pe (dr)] per head      (or q_proj when q_lora_rank=None)
    x ──kv_a_proj_with_mqa──► [c (dc=kv_lora_rank) | k_pe (dr)]   ◄── the cache holds ONLY these dc + dr numbers
         c ──RMSNorm──kv_b_proj──► k_nope (dn), v (dv) per head                     (naive form: decompress)

NOTE (the key design decision): `MLAttention(absorbed=True)` never decompresses. Since k_nope = W_UK c, the score
q_nope . k_nope = (W_UK^T q_nope) . c, so the query is folded into the latent space once per token (q_lat, dc wide) and
the output W_UV (sum_t p_t c_t) is folded into the output side. Attention then is MQA with one 576-wide key (c | k_pe)
and one 512-wide value (c) shared by all heads: that is what phase 2's paged Triton kernel computes.
RoPE: DeepSeek rotates interleaved pairs (x0, x1), (x2, x3), ... We write each rotated pair back in place; HF writes
the rotated evens then the rotated odds. Both q and k are permuted alike, so every dot product (and the logits)
is identical; the in-place layout is the one the phase 2 RoPE kernels produce.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from common.attention import attention_ref
from common.config import ModelConfig
from common.llama import DecoderLayer as LlamaDecoderLayer
from common.llama import RMSNorm, batch_positions


def _mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_parameters(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [dr/2] over the rope head dim and the cos/sin scaling ("default" or "yarn", as HF does)."""
    d, base = cfg.qk_rope_head_dim, cfg.rope_theta
    pos_freqs = base ** (torch.arange(0, d, 2, dtype=torch.float) / d)
    sc = cfg.rope_scaling or {}
    kind = sc.get("rope_type", sc.get("type", "default"))
    if kind == "default":
        return 1.0 / pos_freqs, 1.0
    if kind != "yarn":
        raise NotImplementedError(f"rope_scaling type {kind!r} is not supported by the DeepSeek reference")
    factor, orig = sc["factor"], sc.get("original_max_position_embeddings", cfg.max_position_embeddings)
    ms, ms_all = sc.get("mscale"), sc.get("mscale_all_dim")
    attn_factor = sc.get("attention_factor") or (
        _mscale(factor, ms) / _mscale(factor, ms_all) if ms and ms_all else _mscale(factor))
    beta_fast, beta_slow = sc.get("beta_fast") or 32, sc.get("beta_slow") or 1

    def corr_dim(rot: float) -> float:
        return d * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if sc.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / ((high - low) or 0.001)).clamp(0, 1)
    extrap = 1 - ramp  # 1: keep the original frequency (high-frequency dims), 0: interpolate by `factor`
    return (1.0 / (factor * pos_freqs)) * (1 - extrap) + (1.0 / pos_freqs) * extrap, float(attn_factor)


def softmax_scale(cfg: ModelConfig) -> float:
    """1/sqrt(dn + dr), times mscale(factor, mscale_all_dim)^2 under YaRN (DeepSeek-V3's long-context correction)."""
    scale = (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5
    sc = cfg.rope_scaling or {}
    if sc.get("rope_type", sc.get("type", "default")) != "default" and sc.get("mscale_all_dim"):
        scale *= _mscale(sc["factor"], sc["mscale_all_dim"]) ** 2
    return scale


def rope_cos_sin(cfg: ModelConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [...] -> cos, sin [..., dr/2] in fp32 (scaled by YaRN's attention factor)."""
    inv_freq, attn_factor = rope_parameters(cfg)
    freqs = positions[..., None].float() * inv_freq.to(positions.device)
    return freqs.cos() * attn_factor, freqs.sin() * attn_factor


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, S, dr] with pairs (x[2i], x[2i+1]); cos, sin [B, S, dr/2]. Returns the rotated pairs in place order."""
    c, s = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)


def mla_latent_attention_ref(q_lat: torch.Tensor, q_pe: torch.Tensor, c: torch.Tensor, k_pe: torch.Tensor,
                             scale: float, q_offset: int = 0) -> torch.Tensor:
    """Absorbed MLA = MQA in latent space. q_lat [B, H, S, dc], q_pe [B, H, S, dr]; c [B, T, dc], k_pe [B, T, dr]
    (the T cached tokens, queries at q_offset..). Returns the latent output [B, H, S, dc] (before W_UV)."""
    q = torch.cat((q_lat, q_pe), dim=-1)  # [B, H, S, dc + dr]
    k = torch.cat((c, k_pe), dim=-1)[:, None]  # [B, 1, T, dc + dr]: one key head shared by all query heads
    return attention_ref(q, k, c[:, None], q_offset=q_offset, scale=scale)


class LatentCache:
    """Contiguous MLA cache: per layer and token only [c | k_pe] (dc + dr numbers), never per-head K or V."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        self.dc, self.dr = cfg.kv_lora_rank, cfg.qk_rope_head_dim
        self.buf = torch.empty(cfg.num_hidden_layers, batch_size, max_len, self.dc + self.dr, dtype=dtype,
                               device=device)
        self.max_len, self.seq_len = max_len, 0

    def update(self, layer: int, c: torch.Tensor, k_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store c [B, S, dc], k_pe [B, S, dr]; return everything cached for the layer (views)."""
        end = self.seq_len + c.shape[1]
        if end > self.max_len:
            raise RuntimeError(f"latent cache full: {end} tokens > max_len={self.max_len}; allocate a larger cache")
        self.buf[layer, :, self.seq_len:end] = torch.cat((c, k_pe), dim=-1)
        lat = self.buf[layer, :, :end]
        return lat[..., :self.dc], lat[..., self.dc:]

    def attend_latent(self, layer: int, q_lat, q_pe, c, k_pe, scale: float) -> torch.Tensor:
        c_all, pe_all = self.update(layer, c, k_pe)
        return mla_latent_attention_ref(q_lat, q_pe, c_all, pe_all, scale, q_offset=self.seq_len)

    def advance(self, num_tokens: int) -> None:
        self.seq_len += num_tokens

    def nbytes(self) -> int:
        return self.buf.numel() * self.buf.element_size()

    def __repr__(self) -> str:
        L, B, S, W = self.buf.shape
        return (f"LatentCache(layers={L}, batch={B}, max_len={S}, width={W} (= {self.dc} latent + {self.dr} rope), "
                f"dtype={self.buf.dtype}, used={self.seq_len}, {self.nbytes() / 2**20:.2f} MiB)")


class MLAttention(nn.Module):
    """Multi-head latent attention; `absorbed` picks the form (the weights and the results are the same)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, absorbed: bool = False):
        super().__init__()
        self.layer_idx, self.absorbed = layer_idx, absorbed
        self.h, self.dn, self.dr, self.dv = (cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim,
                                             cfg.v_head_dim)
        self.dc, d = cfg.kv_lora_rank, cfg.hidden_size
        bias = bool(cfg.extra.get("attention_bias", False))
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(d, self.h * (self.dn + self.dr), bias=False)
        else:
            self.q_a_proj = nn.Linear(d, cfg.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, 1e-6)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, self.h * (self.dn + self.dr), bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d, self.dc + self.dr, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.dc, 1e-6)
        self.kv_b_proj = nn.Linear(self.dc, self.h * (self.dn + self.dv), bias=False)
        self.o_proj = nn.Linear(self.h * self.dv, d, bias=bias)
        self.scale = softmax_scale(cfg)

    def absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_b_proj split per head: W_UK [H, dn, dc] (folded into q) and W_UV [H, dv, dc] (folded into the output)."""
        w = self.kv_b_proj.weight.view(self.h, self.dn + self.dv, self.dc)
        return w[:, :self.dn], w[:, self.dn:]

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x) if hasattr(self, "q_proj") else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(b, s, self.h, self.dn + self.dr).transpose(1, 2)  # [B, H, S, dn + dr]
        q_nope, q_pe = q.split((self.dn, self.dr), dim=-1)
        c, k_pe = self.kv_a_proj_with_mqa(x).split((self.dc, self.dr), dim=-1)  # [B, S, dc], [B, S, dr]
        c = self.kv_a_layernorm(c)
        q_pe = apply_rope_interleaved(q_pe, cos, sin)
        k_pe = apply_rope_interleaved(k_pe[:, None], cos, sin)[:, 0]
        out = (self._absorbed if self.absorbed else self._naive)(q_nope, q_pe, c, k_pe, cache)  # [B, H, S, dv]
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.h * self.dv))

    def _naive(self, q_nope, q_pe, c, k_pe, cache):
        offset = 0
        if cache is not None:
            offset = cache.seq_len
            c, k_pe = cache.update(self.layer_idx, c, k_pe)
        b, t, _ = c.shape
        kv = self.kv_b_proj(c).view(b, t, self.h, self.dn + self.dv).transpose(1, 2)  # [B, H, T, dn + dv]
        k_nope, v = kv.split((self.dn, self.dv), dim=-1)
        k = torch.cat((k_nope, k_pe[:, None].expand(b, self.h, t, self.dr)), dim=-1)  # [B, H, T, dn + dr]
        return attention_ref(torch.cat((q_nope, q_pe), dim=-1), k, v, q_offset=offset, scale=self.scale)

    def _absorbed(self, q_nope, q_pe, c, k_pe, cache):
        w_uk, w_uv = self.absorbed_weights()
        q_lat = torch.einsum("bhsd,hdc->bhsc", q_nope, w_uk)  # [B, H, S, dc]
        if cache is None:
            o_lat = mla_latent_attention_ref(q_lat, q_pe, c, k_pe, self.scale)
        else:
            o_lat = cache.attend_latent(self.layer_idx, q_lat, q_pe, c, k_pe, self.scale)  # [B, H, S, dc]
        return torch.einsum("bhsc,hvc->bhsv", o_lat, w_uv)  # [B, H, S, dv]


class DecoderLayer(LlamaDecoderLayer):
    """The Llama block with MLA as its attention (dense MLP; MoE layers arrive in phase 6)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, absorbed: bool):
        if layer_idx >= cfg.extra.get("first_k_dense_replace", cfg.num_hidden_layers):
            raise NotImplementedError(f"layer {layer_idx} is an MoE layer (first_k_dense_replace="
                                      f"{cfg.extra['first_k_dense_replace']}); MoE arrives in phase 6. Use a config "
                                      "whose first_k_dense_replace >= num_hidden_layers.")
        super().__init__(cfg, layer_idx, self_attn=MLAttention(cfg, layer_idx, absorbed))


class DeepseekV3Model(nn.Module):
    def __init__(self, cfg: ModelConfig, absorbed: bool):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, absorbed) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DeepseekV3ForCausalLM(nn.Module):
    """model(input_ids [B, S], positions [B, S] | None, cache | None) -> logits [B, S, V].

    The cache is a `LatentCache` (or phase 2's paged latent cache): `update`, `attend_latent`, `advance`, `seq_len`.
    """

    def __init__(self, cfg: ModelConfig, absorbed: bool = False):
        super().__init__()
        if cfg.kv_lora_rank is None or cfg.qk_rope_head_dim is None:
            raise ValueError("not an MLA config: kv_lora_rank and qk_rope_head_dim must be set (see deepseek-v3-tiny)")
        self.config, self.absorbed = cfg, absorbed
        self.model = DeepseekV3Model(cfg, absorbed)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, cache=None,
                last_only: bool = False) -> torch.Tensor:
        b, s, positions = batch_positions(input_ids, positions, cache)
        h = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(self.config, positions)  # [B, S, dr/2]
        for layer in self.model.layers:
            h = layer(h, cos, sin, cache)
        if cache is not None:
            cache.advance(s)
        return self.lm_head(self.model.norm(h[:, -1:] if last_only else h))

    def make_cache(self, batch_size: int, max_len: int, dtype: torch.dtype, device) -> LatentCache:
        return LatentCache(self.config, batch_size, max_len, dtype=dtype, device=device)

    @classmethod
    def from_state_dict(cls, cfg: ModelConfig, state: dict[str, torch.Tensor], absorbed: bool = False,
                        dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        with torch.device("meta"):
            model = cls(cfg, absorbed)
        missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
        if missing or unexpected:
            raise ValueError(f"state dict does not fit the config: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
        model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, assign=True)
        return model.eval()


@torch.inference_mode()
def generate_greedy(model: DeepseekV3ForCausalLM, input_ids: torch.Tensor, max_tokens: int, cache) -> torch.Tensor:
    """Greedy decoding into a given (empty) cache through the engine (the seam's "engine.generate"). [B, max_tokens]"""
    from common import artifacts
    from common.sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return artifacts.get("engine.generate")(model, input_ids, params, cache=cache)


def mla_kv_elements_per_token_layer(cfg: ModelConfig) -> int:
    """What MLA caches per token and layer: kv_lora_rank + qk_rope_head_dim (576 for DeepSeek-V3)."""
    return cfg.kv_lora_rank + cfg.qk_rope_head_dim


def to_hf_config(cfg: ModelConfig):
    """The transformers DeepseekV3Config with the same shapes (the oracle's config)."""
    from transformers import DeepseekV3Config

    sc = dict(cfg.rope_scaling) if cfg.rope_scaling else {"rope_type": "default"}
    sc["rope_theta"] = cfg.rope_theta
    keep = ("first_k_dense_replace", "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "n_group",
            "topk_group", "moe_intermediate_size", "routed_scaling_factor", "norm_topk_prob", "attention_bias")
    return DeepseekV3Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads, q_lora_rank=cfg.q_lora_rank, kv_lora_rank=cfg.kv_lora_rank,
        qk_nope_head_dim=cfg.qk_nope_head_dim, qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps, rope_parameters=sc,
        rope_interleave=True, tie_word_embeddings=False, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
        num_mtp_layers=0, **{k: cfg.extra[k] for k in keep if k in cfg.extra})
