"""Test helpers: random paged caches with shuffled physical blocks, and a naive per-token oracle."""
from __future__ import annotations

import torch

from common.attention import attention_ref
from phase3_paged_fp8.cache_write import FP8, SCALE_DTYPE

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_cache(num_blocks, block_size, hkv, d, dtype, device=DEVICE, gen=None):
    """Random k/v caches (and FP8 scales): fresh non-zero values everywhere, so stale slots would show up."""
    kc = torch.randn(num_blocks, block_size, hkv, d, generator=gen).to(device)
    vc = torch.randn(num_blocks, block_size, hkv, d, generator=gen).to(device)
    if dtype != FP8:
        return kc.to(dtype), vc.to(dtype), None, None
    ks = (torch.rand(num_blocks, block_size, hkv, generator=gen) * 0.02 + 0.001).to(device, SCALE_DTYPE)
    vs = (torch.rand(num_blocks, block_size, hkv, generator=gen) * 0.02 + 0.001).to(device, SCALE_DTYPE)
    return (kc * 100).clamp(-448, 448).to(FP8), (vc * 100).clamp(-448, 448).to(FP8), ks, vs


def random_block_tables(batch, max_blocks, num_blocks, device=DEVICE, gen=None):
    """Each sequence gets distinct physical blocks drawn from a random permutation of the whole pool."""
    perm = torch.randperm(num_blocks, generator=gen)[:batch * max_blocks]
    return perm.view(batch, max_blocks).to(torch.int32).to(device)


def dequant_token(cache, scale, slot_block, slot_off):
    x = cache[slot_block, slot_off].float()  # [Hkv, D]
    return x if scale is None else x * scale[slot_block, slot_off].float()[:, None]


def naive_paged_attention(q, kc, vc, ks, vs, block_table, n_ctx, q_offset):
    """One sequence, token by token through its block table: q [Hq, Sq, D] -> [Hq, Sq, D] (fp32)."""
    bs = kc.shape[1]
    ks_ = [dequant_token(kc, ks, int(block_table[p // bs]), p % bs) for p in range(n_ctx)]
    vs_ = [dequant_token(vc, vs, int(block_table[p // bs]), p % bs) for p in range(n_ctx)]
    k = torch.stack(ks_, dim=1)[None]  # [1, Hkv, n_ctx, D]
    v = torch.stack(vs_, dim=1)[None]
    return attention_ref(q[None].float(), k, v, q_offset=q_offset)[0]
