"""A paged MLA latent cache: the DeepSeek reference model runs on it unchanged, decoding with the Triton kernel.

    kv [layers, num_blocks, block_size, DC + DR]     block_table [B, max_blocks] int32 (shared by all layers)

It implements the cache interface of common.deepseek (`update`, `attend_latent`, `advance`, `seq_len`), so
`DeepseekV3ForCausalLM(absorbed=True)` runs prefill through the reference and every decode step through
`mla_paged_decode`. NOTE (design): blocks are handed out as a random permutation of the physical ids, on purpose:
logical order != physical order is exactly what a real allocator produces after some churn, and it makes any kernel
that ignores the block table fail the tests. Phase 1's block allocator replaces this table in the serving engine.
"""
from __future__ import annotations

import torch

from common.config import ModelConfig
from common.deepseek import mla_latent_attention_ref
from common.paged_checks import require_positive_ints
from phase2_mla.mla_decode import gather_latents, mla_paged_decode


class PagedLatentCache:
    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, block_size: int = 16,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", use_kernel: bool = True,
                 seed: int = 0, block_manager=None):
        """block_manager: None (blocks = a random permutation) or a phase 1 BlockTableManager with room for
        batch_size * ceil(max_len / block_size) blocks, e.g. artifacts.get("allocator.block_table_ref")(n, bs)."""
        require_positive_ints("PagedLatentCache", batch_size=batch_size, max_len=max_len, block_size=block_size)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):  # a str failed in torch.empty, int8 later
            raise ValueError(f"PagedLatentCache: dtype must be torch.float32, torch.float16 or torch.bfloat16 (the MLA "
                             f"kernel's), got {dtype!r}")
        self.dc, self.dr, self.block_size = cfg.kv_lora_rank, cfg.qk_rope_head_dim, block_size
        blocks_per_seq = -(-max_len // block_size)
        num_blocks = batch_size * blocks_per_seq
        self.kv = torch.empty(cfg.num_hidden_layers, num_blocks, block_size, self.dc + self.dr, dtype=dtype,
                              device=device)
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(num_blocks, generator=g).to(torch.int32)
        self.block_table = perm.view(batch_size, blocks_per_seq).to(device)
        self.manager = block_manager
        if block_manager is not None:  # phase 1 hands out the blocks as tokens arrive
            if block_manager.block_size != block_size:
                raise ValueError(f"block_manager.block_size={block_manager.block_size} != block_size={block_size}")
            for i in range(batch_size):
                block_manager.add_sequence(i)
            self.block_table.zero_()
        self.max_len, self.seq_len, self.use_kernel = max_len, 0, use_kernel

    def _write(self, layer: int, c: torch.Tensor, k_pe: torch.Tensor) -> None:
        """Scatter the S new rows of every sequence to their pages. c [B, S, DC], k_pe [B, S, DR]."""
        b, s, _ = c.shape
        end = self.seq_len + s
        if end > self.max_len:
            raise RuntimeError(f"paged latent cache full: {end} tokens > max_len={self.max_len}")
        if self.manager is not None and layer == 0:  # one allocation step per forward, before layer 0 writes
            ids = list(range(b))
            self.manager.append_tokens_batch(ids, [s] * b)
            for i, row in enumerate(self.manager.block_tables(ids)):
                self.block_table[i, :len(row)] = torch.tensor(row, dtype=torch.int32)
        t = torch.arange(self.seq_len, end, device=c.device)
        pages = self.block_table[:, t // self.block_size].long()  # [B, S]
        self.kv[layer, pages, (t % self.block_size)[None].expand(b, s)] = torch.cat((c, k_pe), -1).to(self.kv.dtype)

    def _gather(self, layer: int, n: int) -> torch.Tensor:
        return torch.stack([gather_latents(self.kv[layer], self.block_table, b, n)
                            for b in range(self.block_table.shape[0])])  # [B, n, DC + DR]

    def update(self, layer: int, c: torch.Tensor, k_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._write(layer, c, k_pe)
        rows = self._gather(layer, self.seq_len + c.shape[1]).to(c.dtype)
        return rows[..., :self.dc], rows[..., self.dc:]

    def attend_latent(self, layer: int, q_lat, q_pe, c, k_pe, scale: float) -> torch.Tensor:
        """q_lat [B, H, S, DC], q_pe [B, H, S, DR] -> [B, H, S, DC]; decode (S == 1) goes through the kernel."""
        b, _, s, _ = q_lat.shape
        if s == 1 and self.use_kernel:
            self._write(layer, c, k_pe)
            lens = torch.full((b,), self.seq_len + 1, dtype=torch.int32, device=q_lat.device)
            o = mla_paged_decode(q_lat[:, :, 0].to(self.kv.dtype), q_pe[:, :, 0].to(self.kv.dtype), self.kv[layer],
                                 self.block_table, lens, scale, max_seq_len=self.seq_len + 1)
            return o[:, :, None].to(q_lat.dtype)
        c_all, pe_all = self.update(layer, c, k_pe)
        return mla_latent_attention_ref(q_lat, q_pe, c_all, pe_all, scale, q_offset=self.seq_len)

    def advance(self, num_tokens: int) -> None:
        self.seq_len += num_tokens

    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def __repr__(self) -> str:
        L, N, P, W = self.kv.shape
        return (f"PagedLatentCache(layers={L}, blocks={N} x {P} tokens, width={W} (= {self.dc} latent + {self.dr} "
                f"rope), dtype={self.kv.dtype}, used={self.seq_len}, {self.nbytes() / 2**20:.2f} MiB)")
