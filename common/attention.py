"""Reference attention in plain PyTorch: the oracle every attention kernel is checked against.

NOTE: on CUDA, PyTorch's SDPA may pick cuDNN attention, which builds an execution plan for every new sequence
length. In decode the length grows by one each step, so every step paid a fresh plan: measured on the H100, 76 ms
per TinyLlama decode step instead of ~30 ms (phase0_tinyllama/profile_decode.py). We therefore let SDPA choose
among flash, memory-efficient and math kernels only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, Hkv, S, D] -> [B, Hkv * n_rep, S, D] (each KV head serves n_rep query heads, as HF does)."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_offset: int = 0,
                  scale: float | None = None) -> torch.Tensor:
    """Causal GQA attention.

    q: [B, Hq, Sq, D]; k, v: [B, Hkv, Skv, D] where the Sq queries sit at positions q_offset .. q_offset+Sq-1 of the
    Skv keys (q_offset = Skv - Sq when the queries are the newest tokens). Returns [B, Hq, Sq, Dv].
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention_ref wants 4-D [B, H, S, D] tensors, got q{tuple(q.shape)} k{tuple(k.shape)}")
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    sq, skv = q.shape[2], k.shape[2]
    with sdpa_kernel(SDPA_BACKENDS):
        if sq == 1 or (sq == skv and q_offset == 0):
            return F.scaled_dot_product_attention(q, k, v, is_causal=sq > 1, scale=scale)
        rows = torch.arange(sq, device=q.device)[:, None] + q_offset
        mask = torch.arange(skv, device=q.device)[None, :] <= rows  # [Sq, Skv]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
