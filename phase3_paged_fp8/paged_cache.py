"""PagedKVCache: the model's KV cache as a pool of fixed-size blocks, bf16/fp16/fp32 or FP8 e4m3.

It speaks the interface of common/kv_cache.py's ContiguousKVCache, `attend(layer, q, k, v)`, `advance(n)` and
`seq_len`, so common/llama.py's LlamaForCausalLM runs on it unchanged:

    cache = PagedKVCache(cfg, batch_size=2, max_len=256, block_size=16, dtype="fp8", device="cuda")
    logits = model(ids, cache=cache)        # prefill: writes K/V into blocks, runs the paged prefill kernel
    logits = model(next_ids, cache=cache)   # decode: one token per sequence, the paged decode kernel

NOTE: blocks come from phase 1's block-table manager (`artifacts.get("allocator.block_table")`, the Rust crate, or
its Python reference where the wheel is not built), one table per sequence shared by all layers, as in vLLM:
physical block j of layer l lives at k_cache[l, j]. Block tables are rebuilt once per forward step (at layer 0) and
reused by the other layers; `repr` says which manager is in use.
"""
from __future__ import annotations

import torch

from common.config import ModelConfig
from common.paged_checks import require_positive_ints
from phase3_paged_fp8.cache_write import FP8, SCALE_DTYPE, write_kv_cache, write_kv_cache_ref
from phase3_paged_fp8.paged_decode import paged_decode, paged_decode_ref
from phase3_paged_fp8.paged_prefill import paged_prefill, paged_prefill_ref

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": FP8}


def make_block_tables(num_blocks: int, block_size: int):
    """Phase 1's BlockTableManager through the seam: the Rust crate, else (its wheel not built on this machine, e.g.
    the GPU box) phase 1's Python reference with the same API. Returns (manager, the artifact it came from)."""
    from common import artifacts
    cls, name = artifacts.get_or_fallback("allocator.block_table", "allocator.block_table_ref")
    return cls(num_blocks, block_size), artifacts.target(name)


class PagedKVCache:
    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, block_size: int = 16,
                 dtype: str | torch.dtype = "fp32", device: str | torch.device = "cpu", num_blocks: int | None = None,
                 backend: str = "auto"):
        """`dtype`: storage ("fp32", "bf16", "fp16", "fp8" or a torch dtype). `backend`: "triton", "ref" (gather +
        SDPA in PyTorch) or "auto" (Triton on CUDA, ref on CPU; Triton also runs on CPU under TRITON_INTERPRET=1)."""
        self.dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
        if self.dtype not in DTYPES.values():
            raise ValueError(f"PagedKVCache dtype must be one of {list(DTYPES)}, got {dtype!r}")
        if backend not in ("auto", "triton", "ref"):
            raise ValueError(f"backend must be 'auto', 'triton' or 'ref', got {backend!r}")
        # (0 named the allocator's num_blocks instead, -1 failed in torch.zeros)
        require_positive_ints("PagedKVCache", batch_size=batch_size, max_len=max_len, block_size=block_size)
        self.device = torch.device(device)
        self.backend = ("triton" if self.device.type == "cuda" else "ref") if backend == "auto" else backend
        self.block_size, self.batch_size, self.max_len = block_size, batch_size, max_len
        self.num_blocks = num_blocks or batch_size * -(-max_len // block_size)
        shape = (cfg.num_hidden_layers, self.num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)  # [L, N, bs, Hkv, D]
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        fp8 = self.dtype == FP8
        self.k_scale = torch.ones(shape[:-1], dtype=SCALE_DTYPE, device=self.device) if fp8 else None
        self.v_scale = torch.ones(shape[:-1], dtype=SCALE_DTYPE, device=self.device) if fp8 else None
        self.tables, self.tables_source = make_block_tables(self.num_blocks, block_size)
        for b in range(batch_size):
            self.tables.add_sequence(b)
        self.seq_len = 0  # tokens cached per sequence (the same for the whole batch, as in ContiguousKVCache)
        self._step: tuple[int, int] | None = None  # (seq_len, new tokens) the metadata below was built for

    def _prepare(self, s: int) -> None:
        """Once per forward step: grow every sequence by s tokens and build block tables / lengths / slots."""
        if self.seq_len + s > self.max_len:
            raise RuntimeError(f"KV cache full: {self.seq_len + s} tokens > max_len={self.max_len}")
        for b in range(self.batch_size):
            self.tables.append_tokens(b, s)
        rows = [list(self.tables.block_table(b)) for b in range(self.batch_size)]
        width = max(map(len, rows))
        bt = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.int32)  # [B, max_blocks]
        pos = torch.arange(self.seq_len, self.seq_len + s)  # [S]
        slots = bt[:, pos // self.block_size].long() * self.block_size + pos % self.block_size  # [B, S]
        self.block_tables = bt.to(self.device)
        self.seq_lens = torch.full((self.batch_size,), self.seq_len + s, dtype=torch.int32, device=self.device)
        self.slot_mapping = slots.reshape(-1).to(self.device)  # [B*S], sequence-major like the packed tokens
        self.cu_seqlens = torch.arange(0, self.batch_size * s + 1, s, dtype=torch.int32, device=self.device)
        self._step = (self.seq_len, s)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [B, Hq, S, D]; k, v: [B, Hkv, S, D] for the S new tokens. Returns [B, Hq, S, D]."""
        b, hq, s, d = q.shape
        if b != self.batch_size:
            raise ValueError(f"cache was built for batch {self.batch_size}, got q with batch {b}")
        if self._step != (self.seq_len, s):
            self._prepare(s)
        caches = (self.k[layer], self.v[layer])
        scales = (None, None) if self.k_scale is None else (self.k_scale[layer], self.v_scale[layer])
        kp = k.transpose(1, 2).reshape(b * s, -1, d)  # [B*S, Hkv, D] packed, sequence-major
        vp = v.transpose(1, 2).reshape(b * s, -1, d)
        meta = (self.block_tables, self.seq_lens)
        if s == 1:
            write = write_kv_cache if self.backend == "triton" else write_kv_cache_ref
            write(kp, vp, self.slot_mapping, *caches, *scales)
            attn = paged_decode if self.backend == "triton" else paged_decode_ref
            out = attn(q[:, :, 0].contiguous(), *caches, *meta, *scales)  # [B, Hq, D]
            return out[:, :, None]
        qp = q.transpose(1, 2).reshape(b * s, hq, d)  # [B*S, Hq, D]
        attn = paged_prefill if self.backend == "triton" else paged_prefill_ref
        extra = {"max_q_len": s} if self.backend == "triton" else {}
        out = attn(qp, kp, vp, self.cu_seqlens, self.seq_lens, self.block_tables, *caches, self.slot_mapping,
                   *scales, **extra)
        return out.view(b, s, hq, d).transpose(1, 2)

    def advance(self, num_tokens: int) -> None:
        self.seq_len += num_tokens

    def free(self) -> None:
        """Give every sequence's blocks back to the allocator."""
        for b in range(self.batch_size):
            self.tables.free_sequence(b)
        self.batch_size = 0

    def nbytes(self) -> int:
        """Bytes of the cache storage (data + FP8 scales)."""
        ts = [t for t in (self.k, self.v, self.k_scale, self.v_scale) if t is not None]
        return sum(t.numel() * t.element_size() for t in ts)

    def __repr__(self) -> str:
        L, N, bs, H, D = self.k.shape
        return (f"PagedKVCache(layers={L}, blocks={N}x{bs} tokens, kv_heads={H}, head_dim={D}, dtype={self.dtype}, "
                f"backend={self.backend}, used={self.seq_len}, {self.nbytes() / 2**20:.1f} MiB, "
                f"tables={self.tables_source})")


@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int, cache) -> torch.Tensor:
    """Greedy decoding through any cache with the attend/advance interface. input_ids [B, S] -> new ids [B, N]."""
    logits = model(input_ids, cache=cache, last_only=True)
    out = []
    for _ in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
        out.append(nxt)
        logits = model(nxt, cache=cache, last_only=True)
    return torch.cat(out, dim=1)
