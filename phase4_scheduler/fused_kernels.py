"""Fused elementwise kernels for the Llama forward: add+RMSNorm, SiLU-and-mul, in-place RoPE on the packed qkv.

Each comes as `foo_kernel` (Triton), `foo()` (checks its inputs, launches) and `foo_ref()` (plain PyTorch with the
rounding of common/llama.py). All accumulate in fp32 and take fp32, fp16 or bf16 tensors. The skinny GEMM (and its
variants with these ops folded in) lives in skinny_gemm.py.

NOTE (why these three): at B=1 a TinyLlama step reads 2.07 GB of weights (0.69 ms at 3 TB/s) and the eager
reference launches ~45 kernels per layer (~2 us each even inside a CUDA graph): RMSNorm alone is ~7 elementwise
kernels, RoPE ~12, SiLU-and-mul 3. Each becomes one pass over memory here, and the residual add rides along with
the norm (vLLM's fused_add_rms_norm), so the residual stream costs no launch of its own.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from common.pdl import pdl_args, pdl_wait

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check(name: str, *tensors: torch.Tensor) -> None:
    """Same device (CUDA, or any under the interpreter), float dtype, last dimension contiguous."""
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected tensors, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name}: dtype {t.dtype} is not supported (use float32, float16 or bfloat16)")
        if t.dim() >= 1 and t.stride(-1) != 1:
            raise ValueError(f"{name}: the last dimension must be contiguous (call .contiguous())")
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{name}: tensors are on different devices {sorted(map(str, devices))}")
    if not (tensors[0].is_cuda or interpreting()):
        raise ValueError(f"{name}: Triton kernels need CUDA tensors (or TRITON_INTERPRET=1); use {name}_ref on CPU")


# ---------------------------------------------------------------- (a) RMSNorm, optionally fused with the residual add
@triton.jit
def rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, N, stride_x, stride_r, stride_o, stride_ro, eps,
                    HAS_RES: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    row = tl.program_id(0).to(tl.int64)
    pdl_wait(PDL)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)  # [BLOCK]
    if HAS_RES:
        x = x + tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        r = x.to(res_out_ptr.dtype.element_ty)  # the residual stream keeps the model dtype, as x + y does in torch
        tl.store(res_out_ptr + row * stride_ro + cols, r, mask=mask)
        x = r.to(tl.float32)
    inv = tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    y = (x * inv).to(out_ptr.dtype.element_ty).to(tl.float32)  # normalise in fp32, round, then scale (HF order)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (y * w).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """x [T, H] (w [H]) -> rms_norm(x) * w; with residual [T, H]: r = x + residual, returns (rms_norm(r) * w, r)."""
    tensors = (x, w) if residual is None else (x, w, residual)
    _check("rms_norm", *tensors)
    if x.dim() != 2 or w.shape != (x.shape[1],):
        raise ValueError(f"rms_norm: want x [T, H] and w [H], got x{tuple(x.shape)} w{tuple(w.shape)}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"rms_norm: residual {tuple(residual.shape)} {residual.dtype} must match x "
                         f"{tuple(x.shape)} {x.dtype}")
    t, h = x.shape
    out = torch.empty_like(x)
    r_out = torch.empty_like(x) if residual is not None else out
    res = residual if residual is not None else x
    block = triton.next_power_of_2(h)
    pdl, launch = pdl_args(x)
    rms_norm_kernel[(t,)](x, res, w, out, r_out, h, x.stride(0), res.stride(0), out.stride(0), r_out.stride(0),
                          eps, HAS_RES=residual is not None, BLOCK=block, PDL=pdl,
                          num_warps=min(16, max(1, block // 256)), **launch)
    return out if residual is None else (out, r_out)


def rms_norm_ref(x: torch.Tensor, w: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """common.llama.RMSNorm's arithmetic (fp32 normalise, cast, multiply by the weight), with the optional add."""
    r = x if residual is None else x + residual
    x32 = r.float()
    y = (w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(r.dtype)).to(r.dtype)
    return y if residual is None else (y, r)


# ---------------------------------------------------------------- (b) SiLU(gate) * up from the packed gate_up output
@triton.jit
def silu_mul_kernel(gu_ptr, out_ptr, I, stride_g, stride_o, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    row = tl.program_id(0).to(tl.int64)
    pdl_wait(PDL)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < I
    g = tl.load(gu_ptr + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * stride_g + I + cols, mask=mask, other=0.0).to(tl.float32)
    s = (g * tl.sigmoid(g)).to(out_ptr.dtype.element_ty).to(tl.float32)  # F.silu rounds to the dtype first
    tl.store(out_ptr + row * stride_o + cols, (s * u).to(out_ptr.dtype.element_ty), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] (gate columns first, then up) -> silu(gate) * up [T, I]."""
    _check("silu_mul", gate_up)
    if gate_up.dim() != 2 or gate_up.shape[1] % 2:
        raise ValueError(f"silu_mul: want gate_up [T, 2I] with an even width, got {tuple(gate_up.shape)}")
    t, i = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((t, i), dtype=gate_up.dtype, device=gate_up.device)
    block = min(1024, triton.next_power_of_2(i))
    pdl, launch = pdl_args(gate_up)
    silu_mul_kernel[(t, triton.cdiv(i, block))](gate_up, out, i, gate_up.stride(0), out.stride(0), BLOCK=block,
                                                PDL=pdl, num_warps=4, **launch)
    return out


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    g, u = gate_up.chunk(2, dim=-1)
    return F.silu(g) * u


# ---------------------------------------------------------------- (c) RoPE on the q and k heads of a packed qkv row
@triton.jit
def rope_qk_kernel(qkv_ptr, pos_ptr, cs_ptr, stride_t, stride_cs, NUM_HEADS: tl.constexpr, H_PAD: tl.constexpr,
                   HALF: tl.constexpr, PDL: tl.constexpr = False):
    t = tl.program_id(0).to(tl.int64)
    pdl_wait(PDL)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    j = tl.arange(0, HALF)
    h = tl.arange(0, H_PAD)
    # cos/sin as the reference sees them: computed in fp32, rounded to the activation dtype
    c = tl.load(cs_ptr + pos * stride_cs + j).to(qkv_ptr.dtype.element_ty).to(tl.float32)[None, :]  # [1, HALF]
    s = tl.load(cs_ptr + pos * stride_cs + HALF + j).to(qkv_ptr.dtype.element_ty).to(tl.float32)[None, :]
    offs = t * stride_t + h[:, None] * (2 * HALF) + j[None, :]  # [H_PAD, HALF]: first halves of q and k heads
    mask = (h < NUM_HEADS)[:, None]
    x1 = tl.load(qkv_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(qkv_ptr + offs + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(qkv_ptr + offs, (x1 * c - x2 * s).to(qkv_ptr.dtype.element_ty), mask=mask)
    tl.store(qkv_ptr + offs + HALF, (x2 * c + x1 * s).to(qkv_ptr.dtype.element_ty), mask=mask)


def _check_rope(shape, device, positions, cos_sin_cache, num_q_heads, num_kv_heads, head_dim, name="rope_qk"):
    """shape, device: those of the packed qkv [T, (Hq+2Hkv)*D] being rotated."""
    if len(shape) != 2 or shape[1] != (num_q_heads + 2 * num_kv_heads) * head_dim:
        raise ValueError(f"{name}: want qkv [T, (Hq + 2 Hkv) * D] = [T, {(num_q_heads + 2 * num_kv_heads) * head_dim}]"
                         f", got {tuple(shape)}")
    if head_dim % 2 or cos_sin_cache.dim() != 2 or cos_sin_cache.shape[1] != head_dim:
        raise ValueError(f"{name}: want an even head_dim and cos_sin_cache [max_pos, D={head_dim}] (cos | sin), "
                         f"got D={head_dim}, cache {tuple(cos_sin_cache.shape)}")
    if positions.shape != (shape[0],) or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name}: want positions [T={shape[0]}] int32/int64, got {tuple(positions.shape)} "
                         f"{positions.dtype}")
    if positions.device != device or cos_sin_cache.device != device:
        raise ValueError(f"{name}: positions on {positions.device}, cos_sin_cache on {cos_sin_cache.device}, qkv on "
                         f"{device}: put them on one device")


def rope_qk(qkv: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor, num_q_heads: int,
            num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """Rotate the q and k heads of qkv [T, (Hq+2Hkv)*D] IN PLACE (half-rotation layout); returns qkv.

    cos_sin_cache [max_pos, D] fp32 holds cos | sin (attention scaling folded in), see make_cos_sin_cache. Positions
    are not range-checked (that would need a host sync): they must be < max_pos.
    """
    _check("rope_qk", qkv, cos_sin_cache)
    _check_rope(qkv.shape, qkv.device, positions, cos_sin_cache, num_q_heads, num_kv_heads, head_dim)
    heads = num_q_heads + num_kv_heads
    pdl, launch = pdl_args(qkv)
    rope_qk_kernel[(qkv.shape[0],)](qkv, positions, cos_sin_cache, qkv.stride(0), cos_sin_cache.stride(0),
                                    NUM_HEADS=heads, H_PAD=triton.next_power_of_2(heads), HALF=head_dim // 2,
                                    PDL=pdl, num_warps=4, **launch)
    return qkv


def rope_qk_ref(qkv: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor, num_q_heads: int,
                num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """Out of place, with common.llama.apply_rope's arithmetic (cos/sin cast to the dtype, x*cos + rot(x)*sin)."""
    from common.llama import apply_rope

    _check_rope(qkv.shape, qkv.device, positions, cos_sin_cache, num_q_heads, num_kv_heads, head_dim)
    t, half = qkv.shape[0], head_dim // 2
    cs = cos_sin_cache[positions.long()]  # [T, D]
    cos = torch.cat((cs[:, :half], cs[:, :half]), -1).to(qkv.dtype)[None]  # [1, T, D]
    sin = torch.cat((cs[:, half:], cs[:, half:]), -1).to(qkv.dtype)[None]
    nq, nk = num_q_heads * head_dim, num_kv_heads * head_dim
    q = qkv[:, :nq].reshape(t, num_q_heads, head_dim).transpose(0, 1)[None]  # [1, Hq, T, D]
    k = qkv[:, nq:nq + nk].reshape(t, num_kv_heads, head_dim).transpose(0, 1)[None]
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return torch.cat((q[0].transpose(0, 1).reshape(t, nq), k[0].transpose(0, 1).reshape(t, nk), qkv[:, nq + nk:]), 1)


def make_cos_sin_cache(cfg, max_positions: int, device=None) -> torch.Tensor:
    """[max_positions, D] fp32: cos | sin of position * inv_freq, times attention scaling (RotaryEmbedding's math)."""
    from common.llama import rope_inv_freq

    inv_freq, scaling = rope_inv_freq(cfg)
    inv_freq = inv_freq.to(device)
    freqs = torch.arange(max_positions, device=device)[:, None].float() * inv_freq.float()  # [P, D/2]
    return torch.cat((freqs.cos() * scaling, freqs.sin() * scaling), dim=-1).contiguous()
