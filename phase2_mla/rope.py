"""RoPE in place on q and k from a cos/sin cache at arbitrary positions: Triton kernel, wrapper, PyTorch reference.

    q [T, Hq, R], k [T, Hk, R]   (last dim contiguous; token/head strides free: q may be a slice of a wider head)
    cos, sin [max_pos, R/2] fp32 (see `cos_sin_cache`), positions [T] int64
    half-rotation ("neox", Llama):   pair i = (x[i], x[i + R/2])
    interleaved  ("gptj", DeepSeek): pair i = (x[2i], x[2i+1])

NOTE (design): one function, two layouts: the layout only changes which two addresses form a pair, so a constexpr
flag picks the offsets and everything else is shared. The kernel writes in place (no output allocation; q and k are
read once and written once), which is why its speed is judged against a device-to-device copy of the same bytes.
The CUDA C twin lives in rope_kernel.cu / rope_cuda.py and is tested against the same reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LAYOUTS = ("half", "interleaved")


def cos_sin_cache(inv_freq: torch.Tensor, max_pos: int, scaling: float = 1.0,
                  device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [max_pos, R/2] fp32 from inverse frequencies [R/2] (times a YaRN attention factor, if any)."""
    if isinstance(max_pos, bool) or not isinstance(max_pos, int) or max_pos < 1:
        raise ValueError(f"max_pos must be a positive int (the longest position + 1), got {max_pos!r}")
    freqs = torch.arange(max_pos, dtype=torch.float32)[:, None] * inv_freq.float()[None]  # [max_pos, R/2]
    return (freqs.cos() * scaling).to(device).contiguous(), (freqs.sin() * scaling).to(device).contiguous()


def rope_ref(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
             layout: str = "half") -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch, out of place: returns rotated copies of q [T, Hq, R] and k [T, Hk, R] (fp32 math)."""
    c, s = cos[positions][:, None], sin[positions][:, None]  # [T, 1, R/2]

    def rot(x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        if layout == "half":
            a, b = xf.chunk(2, dim=-1)
            return torch.cat((a * c - b * s, b * c + a * s), dim=-1).to(x.dtype)
        a, b = xf[..., 0::2], xf[..., 1::2]
        return torch.stack((a * c - b * s, b * c + a * s), dim=-1).flatten(-2).to(x.dtype)

    return rot(q), rot(k)


@triton.jit
def rope_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, pos_ptr, q_st, q_sh, k_st, k_sh, HQ, HK, NUM_QB,
                HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, INTERLEAVED: tl.constexpr):
    """Grid (T, head blocks of q then of k). Each program rotates BLOCK_H heads of one token."""
    t = tl.program_id(0)
    hb = tl.program_id(1)
    pos = tl.load(pos_ptr + t)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HALF
    c = tl.load(cos_ptr + pos * HALF + d, mask=dmask, other=0.0)[None, :]  # [1, BLOCK_D]
    s = tl.load(sin_ptr + pos * HALF + d, mask=dmask, other=0.0)[None, :]
    if hb < NUM_QB:
        h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
        rows = q_ptr + t * q_st + h[:, None] * q_sh  # [BLOCK_H, 1]
        hmask = h < HQ
    else:
        h = (hb - NUM_QB) * BLOCK_H + tl.arange(0, BLOCK_H)
        rows = k_ptr + t * k_st + h[:, None] * k_sh
        hmask = h < HK
    if INTERLEAVED:
        # load whole rows contiguously (coalesced), split them into (even, odd) pairs in registers
        r = tl.arange(0, 2 * BLOCK_D)
        m = hmask[:, None] & (r[None, :] < 2 * HALF)
        x = tl.load(rows + r[None, :], mask=m, other=0.0).to(tl.float32)  # [BLOCK_H, 2 * BLOCK_D]
        a, b = tl.split(tl.reshape(x, [BLOCK_H, BLOCK_D, 2]))  # [BLOCK_H, BLOCK_D] each
        y = tl.reshape(tl.join(a * c - b * s, b * c + a * s), [BLOCK_H, 2 * BLOCK_D])
        tl.store(rows + r[None, :], y.to(q_ptr.dtype.element_ty), mask=m)
    else:
        p1, p2 = rows + d[None, :], rows + d[None, :] + HALF
        m = hmask[:, None] & dmask[None, :]
        a = tl.load(p1, mask=m, other=0.0).to(tl.float32)  # [BLOCK_H, BLOCK_D]
        b = tl.load(p2, mask=m, other=0.0).to(tl.float32)
        tl.store(p1, (a * c - b * s).to(p1.dtype.element_ty), mask=m)
        tl.store(p2, (b * c + a * s).to(p2.dtype.element_ty), mask=m)


def check_rope_args(q, k, cos, sin, positions, layout, bounds: bool = True) -> None:
    """Raise a ValueError that names the problem for any argument rope_() cannot take."""
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin), ("positions", positions)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}"
                            + (" (positions: torch.tensor(..., dtype=torch.int64))" if name == "positions" else ""))
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(f"q and k must be [tokens, heads, rot_dim], got q{tuple(q.shape)} k{tuple(k.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q{tuple(q.shape)} and k{tuple(k.shape)} must agree on tokens and rot_dim")
    if q.shape[2] % 2:
        raise ValueError(f"rot_dim must be even, got {q.shape[2]}")
    if q.dtype != k.dtype or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"q and k must share a float dtype (fp32/fp16/bf16), got {q.dtype} and {k.dtype}")
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError("the last dim of q and k must be contiguous (stride 1); other strides may be anything")
    half = q.shape[2] // 2
    if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[1] != half:
        raise ValueError(f"cos and sin must be [max_pos, {half}], got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if cos.dtype != torch.float32 or sin.dtype != torch.float32 or not (cos.is_contiguous() and sin.is_contiguous()):
        raise ValueError("cos and sin must be contiguous float32 (build them with cos_sin_cache)")
    if positions.shape != (q.shape[0],) or positions.dtype != torch.int64:
        raise ValueError(f"positions must be int64 [{q.shape[0]}], got {positions.dtype} {tuple(positions.shape)}")
    devs = {t.device for t in (q, k, cos, sin, positions)}
    if len(devs) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devs))}")
    if bounds and positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= cos.shape[0]):
        raise ValueError(f"positions must lie in [0, {cos.shape[0]}): the cos/sin cache is too short")


def rope_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
          layout: str = "half", block_h: int | None = None, num_warps: int = 4,
          check_bounds: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k in place with the Triton kernel; returns (q, k). `check_bounds=False` skips the host sync that
    validates positions (benchmarks)."""
    check_rope_args(q, k, cos, sin, positions, layout, bounds=check_bounds)
    t, hq, r = q.shape
    if t == 0:
        return q, k
    half = r // 2
    block_d = triton.next_power_of_2(half)
    bh = block_h or max(1, min(16, 4096 // block_d, triton.next_power_of_2(max(hq, k.shape[1]))))
    nqb, nkb = triton.cdiv(hq, bh), triton.cdiv(k.shape[1], bh)
    rope_kernel[(t, nqb + nkb)](q, k, cos, sin, positions, q.stride(0), q.stride(1), k.stride(0), k.stride(1), hq,
                                k.shape[1], nqb, HALF=half, BLOCK_H=bh, BLOCK_D=block_d,
                                INTERLEAVED=layout == "interleaved", num_warps=num_warps)
    return q, k
