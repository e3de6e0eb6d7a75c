"""Weight loading: GGUF files, HF checkpoint directories (safetensors), and random init from a config.

Every loader returns a state dict with HF transformers' parameter names ("model.layers.0.self_attn.q_proj.weight",
...), so the reference model, the HF oracle and the HF exporter share one naming.

NOTE (llama.cpp conventions, checked against HF logits in tests): GGUF stores attn_q/attn_k rows permuted for
llama.cpp's interleaved RoPE; `_unpermute` restores HF's half-rotation order. `tensor.shape` is in ggml order
(reversed) while `gguf.quants.dequantize` already returns (out, in).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from common.config import ModelConfig
from common.errors import CorruptModelFileError, ModelNotFoundError, UnsupportedTensorTypeError

# Tensor types whose dequantisation we support (and test against HF on the real model for F32/Q4_1/Q8_0).
SUPPORTED_GGUF_TYPES = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}

_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GGUF_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                      "output.weight": "lm_head.weight"}


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_config(reader) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise UnsupportedTensorTypeError(f"GGUF architecture {arch!r} is not supported (only 'llama').")
    g = lambda k, d=None: _field(reader, f"llama.{k}", d)  # noqa: E731
    n_embd, n_head = int(g("embedding_length")), int(g("attention.head_count"))
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    vocab = g("vocab_size") or (int(embd.shape[-1]) if embd is not None else None)
    return ModelConfig(
        vocab_size=int(vocab), hidden_size=n_embd, intermediate_size=int(g("feed_forward_length")),
        num_hidden_layers=int(g("block_count")), num_attention_heads=n_head,
        num_key_value_heads=int(g("attention.head_count_kv", n_head)),
        head_dim=int(g("rope.dimension_count", n_embd // n_head)),
        max_position_embeddings=int(g("context_length", 2048)),
        rms_norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(g("rope.freq_base", 10000.0)), tie_word_embeddings=not has_output,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"))


def load_gguf(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Dequantise every tensor of a llama GGUF to float32 with HF names."""
    import gguf  # local import: only this loader needs it

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {path}. Check the path, or run `make setup` for the default "
                                 "SmolLM2 model.")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, IndexError, KeyError, OSError) as e:  # gguf's own: 'GGUF magic invalid', a numpy reshape
        raise CorruptModelFileError(
            f"{path} is not a readable GGUF file ({path.stat().st_size:,} bytes; the gguf reader said: {e}). It is "
            "truncated or corrupt, e.g. an interrupted download or copy: fetch it again (`make setup` for the "
            "default SmolLM2 model) and compare its size with the source's.") from e
    for t in reader.tensors:  # check every type before any work
        if t.tensor_type.name not in SUPPORTED_GGUF_TYPES:
            raise UnsupportedTensorTypeError(
                f"tensor {t.name!r} in {path.name} has GGUF type {t.tensor_type.name}, which TitanInfer cannot "
                f"dequantise (supported: {', '.join(sorted(SUPPORTED_GGUF_TYPES))}). Re-export the model with one "
                "of those types, e.g. llama.cpp's `llama-quantize model.gguf out.gguf Q8_0`.")
    cfg = gguf_config(reader)
    state: dict[str, torch.Tensor] = {}
    for t in tqdm(reader.tensors, desc=f"loading {path.name}", unit="tensor", leave=False,
                  disable=len(reader.tensors) < 64 or not sys.stderr.isatty()):
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w = w.reshape([int(x) for x in reversed(t.shape)]) if w.ndim != len(t.shape) else w
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", t.name)
        if m:
            layer, kind = int(m.group(1)), m.group(2)
            if kind == "attn_q":
                w = _unpermute(w, cfg.num_attention_heads)
            elif kind == "attn_k":
                w = _unpermute(w, cfg.num_key_value_heads)
            name = f"model.layers.{layer}.{_GGUF_LAYER_NAMES[kind]}.weight"
        elif t.name in _GGUF_GLOBAL_NAMES:
            name = _GGUF_GLOBAL_NAMES[t.name]
        else:
            continue  # e.g. rope_freqs: recomputed from the config
        state[name] = torch.from_numpy(np.array(w, dtype=np.float32, order="C"))  # own, writable copy
    return cfg, state


def load_hf_dir(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """An HF checkpoint directory: config.json + *.safetensors (sharded or not)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} is not an HF checkpoint directory: config.json is missing.")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"no *.safetensors weights in {path} (PyTorch .bin checkpoints are not supported; "
                                 "convert them with transformers' save_pretrained(safe_serialization=True)).")
    cfg = ModelConfig.from_json(path / "config.json")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return cfg, state


def save_hf_dir(cfg: ModelConfig, state: dict[str, torch.Tensor], path: str | Path, tokenizer=None) -> Path:
    """Write a checkpoint transformers can load: config.json, model.safetensors, tokenizer files."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
    tensors = {k: v.contiguous() for k, v in state.items() if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def random_state_dict(cfg: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu", std: float = 0.02) -> dict[str, torch.Tensor]:
    """Random weights with the config's shapes (normal(0, std) matrices, norms near 1)."""
    from common.model_loader import model_class  # the model defines the shapes

    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in model_class(cfg)(cfg).state_dict().items()}
    out = {}
    for k, shape in shapes.items():  # generated on the target device: 1.1B numbers in well under a second on a GPU
        t = torch.randn(shape, generator=g, device=device, dtype=torch.float32)
        t = 1.0 + 0.1 * t if k.endswith("norm.weight") else std * t
        out[k] = t.to(dtype)
    return out
