"""The contiguous KV cache: one [B, Hkv, max_len, D] buffer per layer for K and for V.

NOTE: the model talks to any cache through one method, `attend(layer, q, k, v)`: store the new keys and values,
attend the queries over everything cached. Phase 3's paged caches implement the same method, so the reference
model runs unchanged on contiguous, paged bf16 and paged FP8 caches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

from common.attention import SDPA_BACKENDS, attention_ref, repeat_kv
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


class StaticKVCache(ContiguousKVCache):
    """A contiguous cache whose write position lives in a DEVICE tensor, so a decode step can be captured once in a
    CUDA graph and replayed for every token (common/cuda_graph.py).

    NOTE: a graph replays fixed kernels on fixed addresses: no Python int may steer the work. So the new keys are
    written with index_copy_ at `pos` (a 0-d device tensor), attention always spans the whole [max_len] buffer, and
    a mask hides the slots at or past the newest token. `advance` adds to `pos` on the device; replaying a captured
    step therefore moves the cache forward by itself. Reading max_len slots instead of seq_len costs bandwidth at
    long buffers; phase 3's paged kernels avoid that by reading seq_lens from device memory.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        super().__init__(cfg, batch_size, max_len, dtype=dtype, device=device)
        self.k.zero_()
        self.v.zero_()
        self.pos = torch.zeros((), dtype=torch.long, device=device)  # tokens cached so far, on the device
        self.slots = torch.arange(max_len, device=device)  # [max_len]

    @property
    def seq_len(self) -> int:  # host view (a sync): only for callers outside a captured region
        return int(self.pos)

    @seq_len.setter
    def seq_len(self, value: int) -> None:
        if hasattr(self, "pos"):
            self.pos.fill_(value)

    def positions(self, batch_size: int, num_tokens: int) -> torch.Tensor:
        """[B, S] positions of the next num_tokens tokens, computed on the device (capturable)."""
        return (self.pos + self.slots[:num_tokens]).expand(batch_size, num_tokens)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [B, Hq, S, D]; k, v: [B, Hkv, S, D]. Writes at pos..pos+S-1, attends over the masked buffer."""
        s = q.shape[2]
        idx = self.pos + self.slots[:s]  # [S] device-side write slots
        self.k[layer].index_copy_(2, idx, k)
        self.v[layer].index_copy_(2, idx, v)
        mask = self.slots[None, :] <= idx[:, None]  # [S, max_len]: key j is visible to query i iff j <= pos + i
        n_rep = q.shape[1] // k.shape[1]
        if s == 1:  # decode: grouped attention, no repeat_kv copy of the whole buffer
            b, hkv, _, d = k.shape
            qg = q.view(b, hkv, n_rep, d)  # [B, Hkv, G, D]: the G query heads of each KV head
            scores = torch.matmul(qg, self.k[layer].transpose(-1, -2)) * d ** -0.5  # [B, Hkv, G, max_len]
            p = scores.float().masked_fill(~mask, float("-inf")).softmax(-1).to(q.dtype)
            return torch.matmul(p, self.v[layer]).view(b, hkv * n_rep, 1, d)  # [B, Hq, 1, D]
        with sdpa_kernel(SDPA_BACKENDS):
            return F.scaled_dot_product_attention(q, repeat_kv(self.k[layer], n_rep), repeat_kv(self.v[layer], n_rep),
                                                  attn_mask=mask)

    def advance(self, num_tokens: int) -> None:
        self.pos += num_tokens

    def __repr__(self) -> str:
        return super().__repr__().replace("ContiguousKVCache", "StaticKVCache")
