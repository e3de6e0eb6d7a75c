"""ModelRunner: owns the model and the paged KV pool, runs ONE forward per step over mixed prefill/decode requests.

A step's tokens are packed into one row, vLLM-style: requests A (3 prompt tokens), B (1 decode token), C (2-token
prefill chunk) become input_ids [1, 6] = [a0 a1 a2 | b7 | c4 c5] with explicit positions [0 1 2 | 7 | 4 5]. The
linear layers see one [6, hidden] matrix; only attention needs to know where sequences start and end, and it gets
that from a `BatchAttention` context (cu_seqlens, seq_lens, block tables, slot mapping) that speaks the
`attend(layer, q, k, v)` interface common/llama.py calls.

NOTE (paths): on CUDA, phase 3's Triton kernels through the seam ("kv_cache.write" + "attention.paged_decode" for
decode-only steps, "attention.paged_prefill" for anything with a prefill); on CPU their plain-PyTorch references
("*_ref": gather each sequence's pages, SDPA), exact in fp32. The per-step metadata are the only inputs besides the
token ids, so a decode step's tensors can later live in static buffers for CUDA-graph capture (not done yet).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from common import artifacts


class BatchAttention:
    """The attention context of one packed step: `attend(layer, q, k, v)` over the paged pool."""

    def __init__(self, runner: "ModelRunner", q_lens: list[int], seq_lens: list[int], block_tables: list[list[int]],
                 slot_mapping: list[int]):
        dev = runner.device
        width = max(map(len, block_tables))
        self.runner = runner
        self.decode_only = all(n == 1 for n in q_lens)
        self.block_tables = torch.tensor([t + [0] * (width - len(t)) for t in block_tables], dtype=torch.int32,
                                         device=dev)  # [B, max_blocks]
        self.seq_lens = torch.tensor(seq_lens, dtype=torch.int32, device=dev)  # [B] tokens cached after this step
        cu = [0]
        for n in q_lens:
            cu.append(cu[-1] + n)
        self.cu_seqlens = torch.tensor(cu, dtype=torch.int32, device=dev)  # [B+1]
        self.slot_mapping = torch.tensor(slot_mapping, dtype=torch.int64, device=dev)  # [T]
        self.max_q_len = max(q_lens)
        self.seq_len = 0  # unused: the runner passes positions explicitly

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [1, Hq, T, D]; k, v: [1, Hkv, T, D] for the T packed tokens. Returns [1, Hq, T, D]."""
        _, hq, t, d = q.shape
        r = self.runner
        kc, vc = r.k_cache[layer], r.v_cache[layer]  # [N, bs, Hkv, D]
        qp = q[0].transpose(0, 1).contiguous()  # [T, Hq, D]
        kp = k[0].transpose(0, 1).contiguous()  # [T, Hkv, D]
        vp = v[0].transpose(0, 1).contiguous()
        if self.decode_only and r.decode_fn is not None:
            r.write_fn(kp, vp, self.slot_mapping, kc, vc)
            out = r.decode_fn(qp, kc, vc, self.block_tables, self.seq_lens)  # [B=T, Hq, D]
        else:
            extra = {"max_q_len": self.max_q_len} if r.backend == "triton" else {}
            out = r.prefill_fn(qp, kp, vp, self.cu_seqlens, self.seq_lens, self.block_tables, kc, vc,
                               self.slot_mapping, **extra)  # [T, Hq, D]
        return out.transpose(0, 1)[None]

    def advance(self, num_tokens: int) -> None:
        pass


class ModelRunner:
    def __init__(self, loaded, num_blocks: int, block_size: int = 16, backend: str = "auto"):
        """`loaded`: a common.model_loader.LoadedModel (Llama family). `backend`: "triton", "ref" or "auto"."""
        cfg = loaded.config
        if cfg.is_mla:
            raise NotImplementedError("the phase-4 engine runs Llama-family models; MLA models need a latent paged "
                                      "cache in the runner (phase 2's PagedLatentCache), not wired in yet")
        if backend not in ("auto", "triton", "ref"):
            raise ValueError(f"backend must be 'auto', 'triton' or 'ref', got {backend!r}")
        self.model, self.config, self.device, self.dtype = loaded.model, cfg, loaded.device, loaded.dtype
        self.backend = ("triton" if self.device.type == "cuda" else "ref") if backend == "auto" else backend
        self.block_size, self.num_blocks = block_size, num_blocks
        shape = (cfg.num_hidden_layers, num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)  # [L, N, bs, Hkv, D]
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        suffix = "" if self.backend == "triton" else "_ref"
        self.write_fn = artifacts.get("kv_cache.write" + suffix)
        self.prefill_fn = artifacts.get("attention.paged_prefill" + suffix)
        # the reference prefill handles decode rows exactly; the Triton decode kernel is faster for decode-only steps
        self.decode_fn = artifacts.get("attention.paged_decode") if self.backend == "triton" else None

    def nbytes(self) -> int:
        return 2 * self.k_cache.numel() * self.k_cache.element_size()

    @torch.inference_mode()
    def execute(self, token_ids: list[int], positions: list[int], q_lens: list[int], seq_lens: list[int],
                block_tables: list[list[int]], slot_mapping: list[int]) -> torch.Tensor:
        """One packed forward. Returns the logits of each sequence's LAST scheduled token: [B, V] (float32)."""
        m = self.model.model
        ctx = BatchAttention(self, q_lens, seq_lens, block_tables, slot_mapping)
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)[None]  # [1, T]
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)[None]  # [1, T]
        h = m.embed_tokens(ids)  # [1, T, hidden]
        cos, sin = m.rotary_emb(pos, h.dtype)
        for layer in m.layers:
            h = layer(h, cos, sin, ctx)
        last = ctx.cu_seqlens[1:].long() - 1  # [B] index of each sequence's last token
        h = m.norm(h[0, last])  # [B, hidden]
        head = self.model.lm_head
        logits = F.linear(h, m.embed_tokens.weight) if head is None else head(h)
        return logits.float()  # [B, V]

    def __repr__(self) -> str:
        L, N, bs, H, D = self.k_cache.shape
        return (f"ModelRunner(backend={self.backend}, device={self.device}, dtype={self.dtype}, KV pool {N} blocks x "
                f"{bs} tokens x {L} layers, {self.nbytes() / 2**20:.1f} MiB)")
