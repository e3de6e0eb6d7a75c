"""Model configurations and presets.

NOTE: one dataclass covers the Llama family (phase 0) and the DeepSeek-V3 additions (MLA, MoE: phases 2 and 6);
fields a family does not use keep their defaults. Names follow HF transformers' config.json so that loading and
exporting HF checkpoints is a rename-free round trip.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import UnknownPresetError


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_hidden_layers: int = 22
    num_attention_heads: int = 32
    num_key_value_heads: int = 4
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    model_type: str = "llama"
    # DeepSeek-V3 (MLA) fields; used by phase 2 onward.
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}: GQA needs whole query groups")

    @property
    def num_kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    def num_params(self) -> int:
        """Parameter count of a Llama-family model with this config (MLA models: count the model's parameters)."""
        if self.is_mla:
            raise NotImplementedError("num_params() counts Llama-family layouts; for an MLA model use "
                                      "sum(p.numel() for p in model.parameters())")
        d, f, L, v = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        per_layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d
        return v * d * (1 if self.tie_word_embeddings else 2) + L * per_layer + d

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """KV-cache bytes one token occupies across all layers: K and V per KV head, or MLA's latent + rope key."""
        if self.is_mla:
            return self.num_hidden_layers * (self.kv_lora_rank + self.qk_rope_head_dim) * dtype_bytes
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_hf_dict(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra" and v is not None}
        d.update(self.extra)
        d["architectures"] = ["LlamaForCausalLM"] if self.model_type == "llama" else d.get("architectures", [])
        d.setdefault("hidden_act", "silu")
        d.setdefault("attention_bias", False)
        d.setdefault("mlp_bias", False)
        return d

    @classmethod
    def from_hf_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k not in ("architectures",)}
        if known.get("rope_scaling") is None and isinstance(d.get("rope_parameters"), dict):
            rp = dict(d["rope_parameters"])  # transformers 5 folds rope_theta into rope_parameters
            known.setdefault("rope_theta", rp.pop("rope_theta", cls.rope_theta))
            if rp.get("rope_type", "default") != "default":
                known["rope_scaling"] = rp
        return cls(**known, extra=extra)

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        return cls.from_hf_dict(json.loads(Path(path).read_text()))


PRESETS: dict[str, ModelConfig] = {
    # SmolLM2-135M-Instruct: the default model, shipped as a GGUF (see common/assets.py).
    "smollm2-135m": ModelConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
    # TinyLlama-1.1B-Chat-v1.0: users bring it as an HF directory; its shapes drive the GPU benchmarks.
    "tinyllama-1.1b": ModelConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
}

# phase 2: DeepSeek-V3-style MLA configs. Every layer dense (first_k_dense_replace >= num_hidden_layers) until phase 6
# brings MoE. "deepseek-v3-tiny" is small enough for CPU tests against HF; "deepseek-v3" has the real attention
# dimensions (never instantiated here: its layers 3.. are MoE; it drives the cache arithmetic and benchmark shapes).
_DSV3_YARN = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32,
              "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
PRESETS["deepseek-v3-tiny"] = ModelConfig(
    vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
    num_key_value_heads=8, max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=10000.0,
    rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "beta_fast": 32,
                  "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, model_type="deepseek_v3",
    q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
    extra={"architectures": ["DeepseekV3ForCausalLM"], "first_k_dense_replace": 2, "hidden_act": "silu"})
PRESETS["deepseek-v3"] = ModelConfig(
    vocab_size=129280, hidden_size=7168, intermediate_size=18432, num_hidden_layers=61, num_attention_heads=128,
    num_key_value_heads=128, max_position_embeddings=163840, rms_norm_eps=1e-6, rope_theta=10000.0,
    rope_scaling=_DSV3_YARN, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, model_type="deepseek_v3",
    q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
    extra={"architectures": ["DeepseekV3ForCausalLM"], "first_k_dense_replace": 3, "hidden_act": "silu",
           "n_routed_experts": 256, "num_experts_per_tok": 8, "moe_intermediate_size": 2048})


def get_preset(name: str) -> ModelConfig:
    """The preset's config (a fresh copy). Unknown names raise with the closest known names."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownPresetError(
            f"unknown preset {name!r}.{hint} Known presets: {', '.join(sorted(PRESETS))}. "
            "A model can also be a .gguf file, an HF checkpoint directory or an HF repo id in the local HF cache.")
    return dataclasses.replace(PRESETS[name], extra=dict(PRESETS[name].extra))


def register_preset(name: str, config: ModelConfig) -> None:
    """Later phases add presets (e.g. tiny DeepSeek-V3-style configs) through this."""
    PRESETS[name] = config
