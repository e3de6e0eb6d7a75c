"""Fused decode kernels for the Llama forward: add+RMSNorm, SiLU-and-mul, in-place RoPE on packed qkv, skinny GEMM.

Each comes as `foo_kernel` (Triton), `foo()` (checks its inputs, launches) and `foo_ref()` (plain PyTorch with the
rounding of common/llama.py). All accumulate in fp32 and take fp32, fp16 or bf16 tensors.

NOTE (why these four): at B=1 a TinyLlama step reads 2.2 GB of weights (0.73 ms at 3 TB/s) and the eager
reference launches ~45 kernels per layer (~2 us each even inside a CUDA graph). Fusing the residual add into the
norm, SiLU into the multiply and RoPE into one in-place pass leaves ~9 launches per layer; the skinny GEMM reads the
weight matrix at high bandwidth where cuBLAS, tuned for big M, reaches ~1 TB/s at M=1: it gives every program a
thin slab of BLOCK_N weight rows and walks K in wide tiles (128-bit loads), so even the 2048x2048 projection spreads
over hundreds of programs. M == 1 uses a multiply-and-sum (no tensor cores needed); 2 <= M <= 16 pads M to 16 and
uses tl.dot with the weight tile as the big operand. Tile sizes are autotuned per (N, K, path) on the GPU, so run
every shape once before capturing a CUDA graph.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

SKINNY_MAX_M = 16  # linear() sends x with at most this many rows to the skinny kernel
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
                    HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
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
    rms_norm_kernel[(t,)](x, res, w, out, r_out, h, x.stride(0), res.stride(0), out.stride(0), r_out.stride(0),
                          eps, HAS_RES=residual is not None, BLOCK=block, num_warps=min(16, max(1, block // 256)))
    return out if residual is None else (out, r_out)


def rms_norm_ref(x: torch.Tensor, w: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """common.llama.RMSNorm's arithmetic (fp32 normalise, cast, multiply by the weight), with the optional add."""
    r = x if residual is None else x + residual
    x32 = r.float()
    y = (w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(r.dtype)).to(r.dtype)
    return y if residual is None else (y, r)


# ---------------------------------------------------------------- (b) SiLU(gate) * up from the packed gate_up output
@triton.jit
def silu_mul_kernel(gu_ptr, out_ptr, I, stride_g, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
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
    silu_mul_kernel[(t, triton.cdiv(i, block))](gate_up, out, i, gate_up.stride(0), out.stride(0), BLOCK=block,
                                                num_warps=4)
    return out


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    g, u = gate_up.chunk(2, dim=-1)
    return F.silu(g) * u


# ---------------------------------------------------------------- (c) RoPE on the q and k heads of a packed qkv row
@triton.jit
def rope_qk_kernel(qkv_ptr, pos_ptr, cs_ptr, stride_t, stride_cs, NUM_HEADS: tl.constexpr, H_PAD: tl.constexpr,
                   HALF: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
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
    rope_qk_kernel[(qkv.shape[0],)](qkv, positions, cos_sin_cache, qkv.stride(0), cos_sin_cache.stride(0),
                                    NUM_HEADS=heads, H_PAD=triton.next_power_of_2(heads), HALF=head_dim // 2,
                                    num_warps=4)
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


# ---------------------------------------------------------------- (d) skinny GEMM: out [M, N] = x [M, K] @ w[N, K]^T
# MODE 0: x as is. MODE 1: x <- rms_norm(x + res) * nw (norm_linear; program 0 also writes x + res). MODE 2: x <- the
# SiLU-and-mul of a [M, 2K] gate_up input (silu_mul_linear). The prologue repeats the unfused ops' roundings.
@triton.jit
def _activation(x_ptr, r_ptr, nw_ptr, offs, kk, mask, inv, K, MODE: tl.constexpr, HAS_RES: tl.constexpr):
    """The GEMM input at element offsets `offs` (columns kk), as fp32 values rounded to the activation dtype."""
    dt = x_ptr.dtype.element_ty
    if MODE == 2:
        g = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(x_ptr + offs + K, mask=mask, other=0.0).to(tl.float32)
        x = ((g * tl.sigmoid(g)).to(dt).to(tl.float32) * u).to(dt).to(tl.float32)
    else:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if MODE == 1:
            if HAS_RES:
                x = (x + tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)).to(dt).to(tl.float32)
            nw = tl.load(nw_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
            x = ((x * inv).to(dt).to(tl.float32) * nw).to(dt).to(tl.float32)
    return x


@triton.jit
def _squares(x_ptr, r_ptr, ro_ptr, offs, mask, write, HAS_RES: tl.constexpr):
    """One K tile of norm_linear's first pass: (x + res)^2 in fp32; program 0 (write) also stores x + res."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = (x + tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)).to(ro_ptr.dtype.element_ty)
        tl.store(ro_ptr + offs, r, mask=mask & write)
        x = r.to(tl.float32)
    return x * x


@triton.jit
def _rows(pid, ROPE: tl.constexpr, ROPE_ROWS, HALF: tl.constexpr, BLOCK_N: tl.constexpr):
    """The weight rows a program owns. With ROPE, a program in the q/k region takes BLOCK_N / 2 rotation PAIRS
    (rows j and j + D/2 of a head, interleaved), so its epilogue can rotate them; v rows stay contiguous."""
    i = tl.arange(0, BLOCK_N)
    n = pid * BLOCK_N + i
    if ROPE:
        pair = pid * (BLOCK_N // 2) + i // 2
        n = tl.where(pid * BLOCK_N < ROPE_ROWS, (pair // HALF) * (2 * HALF) + (i % 2) * HALF + pair % HALF, n)
    return n


@triton.jit
def _rotate(x1, x2, j, pos, cs_ptr, stride_cs, apply, dt, HALF: tl.constexpr):
    """RoPE on (x1, x2) = (dim j, dim j + D/2) values rounded to dt; cos/sin rounded to dt as the reference does."""
    c = tl.load(cs_ptr + pos * stride_cs + j).to(dt).to(tl.float32)
    s = tl.load(cs_ptr + pos * stride_cs + HALF + j).to(dt).to(tl.float32)
    return tl.where(apply, x1 * c - x2 * s, x1), tl.where(apply, x2 * c + x1 * s, x2)


@triton.jit
def skinny_gemv_kernel(x_ptr, r_ptr, nw_ptr, ro_ptr, w_ptr, out_ptr, pos_ptr, cs_ptr, N, stride_wn, eps, stride_cs,
                       ROPE_ROWS, K: tl.constexpr, MODE: tl.constexpr, HAS_RES: tl.constexpr, ROPE: tl.constexpr,
                       HALF: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """M == 1: each program owns BLOCK_N weight rows; fp32 partial products pile up in registers, summed once."""
    pid = tl.program_id(0)
    k = tl.arange(0, BLOCK_K)
    inv = 1.0
    if MODE == 1:  # pass 1 over the (L2-resident) input row: its rms
        ss = tl.zeros([BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ss += _squares(x_ptr, r_ptr, ro_ptr, k0 + k, k0 + k < K, pid == 0, HAS_RES)
        inv = tl.rsqrt(tl.sum(ss, axis=0) / K + eps)
    n = _rows(pid, ROPE, ROPE_ROWS, HALF, BLOCK_N)
    n_mask = n < N
    rows = w_ptr + n.to(tl.int64)[:, None] * stride_wn  # [BLOCK_N, 1]
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = tl.max_contiguous(tl.multiple_of(k0 + k, BLOCK_K), BLOCK_K)
        k_mask = kk < K
        xv = _activation(x_ptr, r_ptr, nw_ptr, kk, kk, k_mask, inv, K, MODE, HAS_RES)  # [BLOCK_K]
        wv = tl.load(rows + kk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0,
                     eviction_policy="evict_first")  # [BLOCK_N, BLOCK_K]: 128-bit loads along K
        acc += wv.to(tl.float32) * xv[None, :]
    o = tl.sum(acc, axis=1)  # [BLOCK_N]
    if ROPE:  # rotate the pairs in registers: qkv is rounded first, as the unfused GEMM's output is
        dt = out_ptr.dtype.element_ty
        x1, x2 = tl.split(tl.reshape(o.to(dt).to(tl.float32), [BLOCK_N // 2, 2]))
        j = (pid * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)) % HALF
        pos = tl.load(pos_ptr).to(tl.int64)
        y1, y2 = _rotate(x1, x2, j, pos, cs_ptr, stride_cs, pid * BLOCK_N < ROPE_ROWS, dt, HALF)
        o = tl.reshape(tl.join(y1, y2), [BLOCK_N])
    tl.store(out_ptr + n, o.to(out_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def skinny_gemm_kernel(x_ptr, r_ptr, nw_ptr, ro_ptr, w_ptr, out_ptr, pos_ptr, cs_ptr, M, N, stride_xm, stride_wn,
                       stride_om, eps, stride_cs, ROPE_ROWS, K: tl.constexpr, MODE: tl.constexpr,
                       HAS_RES: tl.constexpr, ROPE: tl.constexpr, HALF: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, M_PAD: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr):
    """2 <= M <= M_PAD: acc^T [BLOCK_N, M_PAD] += w [BLOCK_N, BLOCK_K] @ x^T [BLOCK_K, M_PAD] on the tensor cores."""
    pid = tl.program_id(0)
    m = tl.arange(0, M_PAD)
    k = tl.arange(0, BLOCK_K)
    m_mask = m < M
    inv = tl.full([1, M_PAD], 1.0, tl.float32)
    if MODE == 1:
        ss = tl.zeros([BLOCK_K, M_PAD], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + k
            ss += _squares(x_ptr, r_ptr, ro_ptr, m[None, :] * stride_xm + kk[:, None],
                           m_mask[None, :] & (kk < K)[:, None], pid == 0, HAS_RES)
        inv = tl.rsqrt(tl.sum(ss, axis=0) / K + eps)[None, :]  # [1, M_PAD]
    n = _rows(pid, ROPE, ROPE_ROWS, HALF, BLOCK_N)
    n_mask = n < N
    rows = w_ptr + n.to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros([BLOCK_N, M_PAD], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = tl.max_contiguous(tl.multiple_of(k0 + k, BLOCK_K), BLOCK_K)
        k_mask = kk < K
        wv = tl.load(rows + kk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_K]
        xt = _activation(x_ptr, r_ptr, nw_ptr, m[None, :] * stride_xm + kk[:, None], kk[:, None],
                         m_mask[None, :] & k_mask[:, None], inv, K, MODE, HAS_RES)  # [BLOCK_K, M_PAD] fp32
        if DOT_F32:
            wv = wv.to(tl.float32)
        acc = tl.dot(wv, xt.to(wv.dtype), acc, input_precision=PREC)
    if ROPE:
        dt = out_ptr.dtype.element_ty
        pairs = tl.permute(tl.reshape(acc.to(dt).to(tl.float32), [BLOCK_N // 2, 2, M_PAD]), (0, 2, 1))
        x1, x2 = tl.split(pairs)  # [BLOCK_N / 2, M_PAD]
        j = ((pid * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)) % HALF)[:, None]
        pos = tl.load(pos_ptr + m, mask=m_mask, other=0).to(tl.int64)[None, :]  # [1, M_PAD]
        y1, y2 = _rotate(x1, x2, j, pos, cs_ptr, stride_cs, pid * BLOCK_N < ROPE_ROWS, dt, HALF)
        acc = tl.reshape(tl.permute(tl.join(y1, y2), (0, 2, 1)), [BLOCK_N, M_PAD])
    tl.store(out_ptr + m[None, :] * stride_om + n[:, None], acc.to(out_ptr.dtype.element_ty),
             mask=m_mask[None, :] & n_mask[:, None])


def _bench(fn, quantiles):  # autotuning timer: short, L2 flushed between runs (weights never sit in L2 in a model)
    return triton.testing.do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


_GEMV_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w)
                 for bn, bk, w in [(2, 1024, 4), (4, 512, 4), (4, 1024, 4), (8, 512, 4), (8, 1024, 8), (16, 512, 8)]]
_GEMM_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
                 for bn, bk, w, s in [(16, 256, 4, 3), (16, 512, 4, 3), (32, 256, 4, 3), (64, 128, 4, 4)]]


def _prune(configs, named_args, **kwargs):  # with the RoPE epilogue a program's BLOCK_N/2 pairs must fit one head
    return [c for c in configs if not kwargs.get("ROPE") or kwargs["HALF"] % (c.kwargs["BLOCK_N"] // 2) == 0]


# HAS_RES is left out of the keys on purpose: layer 0's norm (no residual yet) reuses the tuned tile, one fewer tuning
skinny_gemv_tuned = triton.autotune(_GEMV_CONFIGS, key=["N", "K", "MODE", "ROPE"], do_bench=_bench,
                                    prune_configs_by={"early_config_prune": _prune})(skinny_gemv_kernel)
skinny_gemm_tuned = triton.autotune(_GEMM_CONFIGS, key=["N", "K", "MODE", "ROPE", "M_PAD"], do_bench=_bench,
                                    prune_configs_by={"early_config_prune": _prune})(skinny_gemm_kernel)


def _skinny(name, x, w, mode, k, residual=None, norm_w=None, eps=0.0, tune=True, rope=None):
    """Checks shared by the entry points, then one launch. Returns (out [M, N], x + residual or None).
    rope: None or (positions [M], cos_sin_cache [P, D], rows to rotate, D), checked by the caller."""
    _check(name, *(t for t in (x, w, residual, norm_w) if t is not None))
    if x.dim() != 2 or w.dim() != 2 or w.shape[1] != k:
        raise ValueError(f"{name}: want x [M, K] and w [N, K] (nn.Linear layout), got x{tuple(x.shape)} "
                         f"w{tuple(w.shape)}")
    if not 1 <= x.shape[0] <= SKINNY_MAX_M:
        raise ValueError(f"{name}: M={x.shape[0]} rows; the skinny kernel takes 1..{SKINNY_MAX_M} (use linear())")
    if any(t is not None and t.dtype != x.dtype for t in (w, residual, norm_w)):
        raise ValueError(f"{name}: x, w (and residual, norm weight) must share one dtype; cast them")
    if mode and not x.is_contiguous():
        raise ValueError(f"{name}: x must be contiguous (call .contiguous())")
    m, n = x.shape[0], w.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    r_out = torch.empty_like(x) if residual is not None else None
    pos, cs, rope_rows, d = rope if rope is not None else (x, x, 0, 2)
    ptrs = (x, residual if residual is not None else x, norm_w if norm_w is not None else x,
            r_out if r_out is not None else x, w, out, pos, cs)
    flags = dict(K=k, MODE=mode, HAS_RES=residual is not None, ROPE=rope is not None, HALF=d // 2)
    fixed_bn = lambda bn: min(bn, d) if rope is not None else bn  # noqa: E731  (pairs must not cross a head)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    if m == 1:
        args = (*ptrs, n, w.stride(0), eps, cs.stride(0), rope_rows)
        if interpreting() or not tune:
            bn, bk = (4, 32) if interpreting() else (8, 512)
            skinny_gemv_kernel[grid](*args, **flags, BLOCK_N=fixed_bn(bn), BLOCK_K=bk, num_warps=4)
        else:
            skinny_gemv_tuned[grid](*args, **flags)
        return out, r_out
    args = (*ptrs, m, n, x.stride(0), w.stride(0), out.stride(0), eps, cs.stride(0), rope_rows)
    prec = "ieee" if x.dtype == torch.float32 else "tf32"  # tf32 is ignored for 16-bit inputs; fp32 stays exact
    if interpreting():
        skinny_gemm_kernel[grid](*args, **flags, BLOCK_N=fixed_bn(16), BLOCK_K=32, M_PAD=16, DOT_F32=True,
                                 PREC="ieee")
    elif not tune:
        skinny_gemm_kernel[grid](*args, **flags, BLOCK_N=fixed_bn(32), BLOCK_K=256, M_PAD=16, DOT_F32=False,
                                 PREC=prec, num_warps=4, num_stages=3)
    else:
        skinny_gemm_tuned[grid](*args, **flags, M_PAD=16, DOT_F32=False, PREC=prec)
    return out, r_out


def linear_small_m(x: torch.Tensor, w: torch.Tensor, tune: bool = True) -> torch.Tensor:
    """x [M, K] (M <= 16) @ w [N, K]^T -> [M, N] in x's dtype, fp32 accumulation. Autotunes on first use per
    (N, K, dtype, path) unless tune=False (one fixed tile: for one-off shapes, where tuning costs more than it saves)."""
    return _skinny("linear_small_m", x, w, 0, x.shape[-1], tune=tune)[0]


def linear_small_m_ref(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w)


def norm_linear(x: torch.Tensor, norm_w: torch.Tensor, eps: float, w: torch.Tensor,
                residual: torch.Tensor | None = None, tune: bool = True):
    """rms_norm(x [+ residual]) * norm_w @ w^T in one kernel (M <= 16). Returns (out [M, N], x + residual), the
    second being x itself when residual is None."""
    if norm_w.shape != (x.shape[-1],) or (residual is not None and residual.shape != x.shape):
        raise ValueError(f"norm_linear: want norm_w [K] and residual like x {tuple(x.shape)}, got "
                         f"{tuple(norm_w.shape)} and {None if residual is None else tuple(residual.shape)}")
    out, r = _skinny("norm_linear", x, w, 1, x.shape[-1], residual, norm_w, eps, tune)
    return out, (x if r is None else r)


def norm_linear_ref(x, norm_w, eps, w, residual=None):
    if residual is None:
        return F.linear(rms_norm_ref(x, norm_w, eps), w), x
    y, r = rms_norm_ref(x, norm_w, eps, residual)
    return F.linear(y, w), r


def norm_linear_rope(x: torch.Tensor, norm_w: torch.Tensor, eps: float, w: torch.Tensor, positions: torch.Tensor,
                     cos_sin_cache: torch.Tensor, num_q_heads: int, num_kv_heads: int, head_dim: int,
                     residual: torch.Tensor | None = None, tune: bool = True):
    """norm_linear into the packed qkv [M, (Hq+2Hkv)*D], with rope_qk applied in the GEMM's epilogue (one kernel
    for norm, projection and RoPE). Returns (qkv, x + residual)."""
    _check_rope((x.shape[0], w.shape[0]), x.device, positions, cos_sin_cache, num_q_heads, num_kv_heads, head_dim,
                "norm_linear_rope")
    if head_dim & (head_dim - 1) or cos_sin_cache.dtype != torch.float32:
        raise ValueError(f"norm_linear_rope: head_dim must be a power of two (got {head_dim}) and the cos/sin cache "
                         f"float32 (got {cos_sin_cache.dtype}; see make_cos_sin_cache)")
    if norm_w.shape != (x.shape[-1],) or (residual is not None and residual.shape != x.shape):
        raise ValueError(f"norm_linear_rope: want norm_w [K] and residual like x {tuple(x.shape)}")
    rope = (positions, cos_sin_cache, (num_q_heads + num_kv_heads) * head_dim, head_dim)
    out, r = _skinny("norm_linear_rope", x, w, 1, x.shape[-1], residual, norm_w, eps, tune, rope)
    return out, (x if r is None else r)


def norm_linear_rope_ref(x, norm_w, eps, w, positions, cos_sin_cache, num_q_heads, num_kv_heads, head_dim,
                         residual=None):
    qkv, r = norm_linear_ref(x, norm_w, eps, w, residual)
    return rope_qk_ref(qkv, positions, cos_sin_cache, num_q_heads, num_kv_heads, head_dim), r


def silu_mul_linear(gate_up: torch.Tensor, w: torch.Tensor, tune: bool = True) -> torch.Tensor:
    """silu(gate) * up @ w^T in one kernel: gate_up [M, 2K] (M <= 16), w [N, K] -> [M, N]."""
    if gate_up.dim() != 2 or gate_up.shape[-1] % 2:
        raise ValueError(f"silu_mul_linear: want gate_up [M, 2K] with an even width, got {tuple(gate_up.shape)}")
    return _skinny("silu_mul_linear", gate_up, w, 2, gate_up.shape[-1] // 2, tune=tune)[0]


def silu_mul_linear_ref(gate_up: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.linear(silu_mul_ref(gate_up), w)


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Dispatch: x [..., K] with at most SKINNY_MAX_M rows on CUDA (or under the interpreter) -> skinny kernel;
    otherwise F.linear (cuBLAS on the GPU)."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if (x.is_cuda or interpreting()) and 1 <= rows <= SKINNY_MAX_M and x.dtype == w.dtype and x.stride(-1) == 1:
        return linear_small_m(x.reshape(rows, x.shape[-1]), w).view(*x.shape[:-1], w.shape[0])
    return F.linear(x, w)
