"""The contiguous KV cache: one [B, Hkv, max_len, D] buffer per layer for K and for V.

NOTE: the model talks to any cache through one method, `attend(layer, q, k, v)`: store the new keys and values,
attend the queries over everything cached. Phase 3's paged caches implement the same method, so the reference
model runs unchanged on contiguous, paged bf16 and paged FP8 caches.
"""
from __future__ import annotations

import torch

from common.attention import attention_ref
from common.config import ModelConfig


class ContiguousKVCache:
    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        shape = (cfg.num_hidden_layers, batch_size, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.seq_len = 0  # tokens cached so far (the same for every sequence in the batch)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [B, Hq, S, D]; k, v: [B, Hkv, S, D] for the S new tokens. Returns [B, Hq, S, D]."""
        s = q.shape[2]
        end = self.seq_len + s
        if end > self.max_len:
            raise RuntimeError(f"KV cache full: {end} tokens > max_len={self.max_len}")
        self.k[layer, :, :, self.seq_len:end] = k
        self.v[layer, :, :, self.seq_len:end] = v
        return attention_ref(q, self.k[layer, :, :, :end], self.v[layer, :, :, :end], q_offset=self.seq_len)

    def advance(self, num_tokens: int) -> None:
        self.seq_len += num_tokens

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def __repr__(self) -> str:
        L, B, H, S, D = self.k.shape
        return (f"ContiguousKVCache(layers={L}, batch={B}, kv_heads={H}, max_len={S}, head_dim={D}, "
                f"dtype={self.k.dtype}, used={self.seq_len}, {self.nbytes() / 2**20:.1f} MiB)")
