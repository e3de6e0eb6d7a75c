"""Writing new keys/values into the paged KV cache, optionally quantising them to FP8 e4m3 on the way in.

The paged cache of one layer is a pool of fixed-size blocks shared by every sequence:

    k_cache, v_cache: [num_blocks, block_size, Hkv, D]   (bf16 / fp16 / fp32, or float8_e4m3fn)
    k_scale, v_scale: [num_blocks, block_size, Hkv]      (fp16; only for FP8 storage)

A token's *slot* is `block_id * block_size + offset`: the block table maps logical block i of a sequence to a physical
block id, and `slot_mapping[t]` says where new token t goes (-1: skip it, e.g. padding).

NOTE: FP8 scales are per token and per head (one scale for the D values of a head of a token), computed when the token
is written: scale = amax / 448 (448 is e4m3's largest finite value), stored as fp16. A token is never re-quantised
later, so writes are independent and need no read-modify-write of a shared block scale. The cost is 2 bytes of scale
per 64 data bytes at D=64 (3.1%); the kernels apply the K scale to the score column and the V scale to the
probability column, so dequantisation costs one multiply per score, not one per element.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from common.paged_checks import check_slots, require_tensors, values_checkable
from common.pdl import pdl_args, pdl_wait

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
SCALE_DTYPE = torch.float16
SCALE_MIN = 1e-6  # smallest stored scale: keeps all-zero heads finite


def quantize_fp8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (e4m3 values [..., D], fp16 scales [...]) with x ~= values * scale[..., None]."""
    amax = x.float().abs().amax(dim=-1)
    scale = (amax / FP8_MAX).clamp_min(SCALE_MIN).to(SCALE_DTYPE)  # round the scale first, then divide by it
    q = (x.float() / scale.float()[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


_FP8_LUT: dict[torch.device, torch.Tensor] = {}


def fp8_to_float(q: torch.Tensor) -> torch.Tensor:
    """e4m3 -> fp32. On the CPU through a 256-entry table: PyTorch's CPU cast is ~3x slower than the lookup."""
    if q.device.type != "cpu":
        return q.float()
    if q.device not in _FP8_LUT:
        _FP8_LUT[q.device] = torch.arange(256, dtype=torch.uint8).view(FP8).float()
    return _FP8_LUT[q.device][q.view(torch.uint8).long()]


def dequantize_fp8_ref(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (fp8_to_float(q) * scale.float()[..., None]).to(dtype)


@triton.jit
def round_to_e4m3(x):
    """Round fp32 x (|x| <= 448) to the nearest e4m3 value, ties to even, in fp32 arithmetic.

    The cast that follows is then exact. (Triton's CPU interpreter rounds e.g. 127.9 -> 64 when it casts itself:
    it loses the carry from the mantissa into the exponent; hardware does not, and after this both agree.)
    """
    bits = tl.abs(x).to(tl.int32, bitcast=True)
    e = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)  # unbiased exponent; e4m3's subnormals share 2^-6's step
    step = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 2^(e-3): 3 mantissa bits
    inv_step = ((127 - (e - 3)) << 23).to(tl.float32, bitcast=True)
    z = x * inv_step  # exact (power of two); |z| < 16
    z = (z + 12582912.0) - 12582912.0  # round half to even at the units place (1.5 * 2^23 trick)
    return z * step


@triton.jit
def quantize_e4m3(x, AXIS: tl.constexpr):
    """fp32 x -> (e4m3 values as fp32, fp16 scales) with one scale per slice along AXIS (the head dim): scale =
    amax / 448 rounded to fp16 FIRST (at least SCALE_MIN), values x / scale rounded to nearest even (round_to_e4m3:
    exact casts on the interpreter too) -- quantize_fp8_ref's arithmetic. The one quantiser of the FP8 cache: this
    module's write kernel ([H, D] rows, AXIS=1) and phase 4's fused decode attention ([D], AXIS=0) both call it."""
    sc = tl.maximum(tl.math.div_rn(tl.max(tl.abs(x), axis=AXIS), 448.0), 1e-6).to(tl.float16)
    xq = round_to_e4m3(tl.clamp(tl.math.div_rn(x, tl.expand_dims(sc.to(tl.float32), AXIS)), -448.0, 448.0))
    return xq, sc


@triton.jit
def write_kv_cache_kernel(k_ptr, v_ptr, slot_ptr, kc_ptr, vc_ptr, ks_ptr, vs_ptr,
                          stride_kt, stride_kh, stride_vt, stride_vh,
                          H: tl.constexpr, D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
                          QUANT: tl.constexpr, PDL: tl.constexpr):
    """One program per new token: copy (or quantise) its [H, D] keys and values into its slot."""
    t = tl.program_id(0).to(tl.int64)
    pdl_wait(PDL)
    slot = tl.load(slot_ptr + t).to(tl.int64)  # int64: slot * H * D passes 2^31 in a big pool
    if slot < 0:
        return
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    mask = (h[:, None] < H) & (d[None, :] < D)
    k = tl.load(k_ptr + t * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + t * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask, other=0.0).to(tl.float32)
    dst = slot * (H * D) + h[:, None] * D + d[None, :]  # cache rows are contiguous [H, D]
    if QUANT:
        kq, k_sc = quantize_e4m3(k, 1)  # k_sc [BLOCK_H]
        vq, v_sc = quantize_e4m3(v, 1)
        tl.store(kc_ptr + dst, kq.to(kc_ptr.dtype.element_ty), mask=mask)
        tl.store(vc_ptr + dst, vq.to(vc_ptr.dtype.element_ty), mask=mask)
        tl.store(ks_ptr + slot * H + h, k_sc, mask=h < H)
        tl.store(vs_ptr + slot * H + h, v_sc, mask=h < H)
    else:
        tl.store(kc_ptr + dst, k.to(kc_ptr.dtype.element_ty), mask=mask)
        tl.store(vc_ptr + dst, v.to(vc_ptr.dtype.element_ty), mask=mask)


CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, FP8)


def check_scales(k_cache, v_cache, k_scale, v_scale, where: str) -> None:
    """Both caches one dtype of CACHE_DTYPES; an FP8 cache has BOTH scales, each SCALE_DTYPE [num_blocks, block_size,
    Hkv] and contiguous (the kernels index them by slot). Only k_scale was checked: a v_scale of the wrong shape,
    dtype or strides was read or written out of place (a silent wrong answer, or a write past its end)."""
    if k_cache.dtype != v_cache.dtype or k_cache.dtype not in CACHE_DTYPES:
        raise ValueError(f"{where}: k_cache and v_cache must share one dtype of fp32/fp16/bf16/fp8 (e4m3fn), got "
                         f"{k_cache.dtype} and {v_cache.dtype}")
    if (k_cache.dtype == FP8) != (k_scale is not None) or (k_scale is None) != (v_scale is None):
        raise ValueError(f"{where}: an FP8 cache needs k_scale and v_scale [num_blocks, block_size, Hkv]; other "
                         "dtypes take none")
    for name, sc in (("k_scale", k_scale), ("v_scale", v_scale)):
        if sc is not None and (not isinstance(sc, torch.Tensor) or sc.shape != k_cache.shape[:3]
                               or sc.dtype != SCALE_DTYPE or not sc.is_contiguous()):
            got = f"{sc.dtype} {tuple(sc.shape)}" if isinstance(sc, torch.Tensor) else type(sc).__name__
            raise ValueError(f"{where}: scales must be contiguous {SCALE_DTYPE} {tuple(k_cache.shape[:3])} (one per "
                             f"cached token and KV head); {name} is {got}")


def _check(k, v, slot_mapping, k_cache, v_cache, k_scale, v_scale):
    require_tensors("write_kv_cache", k=k, v=v, slot_mapping=slot_mapping, k_cache=k_cache, v_cache=v_cache)
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"k and v must both be [T, Hkv, D], got k{tuple(k.shape)} v{tuple(v.shape)}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"caches must be [num_blocks, block_size, Hkv, D], got {tuple(k_cache.shape)}")
    if k_cache.shape[2:] != k.shape[1:]:
        raise ValueError(f"new tokens have [Hkv, D]={tuple(k.shape[1:])} but the cache holds {tuple(k_cache.shape[2:])}")
    if slot_mapping.shape != (k.shape[0],) or slot_mapping.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"slot_mapping must be int32/int64 [T={k.shape[0]}], got {slot_mapping.dtype} "
                         f"{tuple(slot_mapping.shape)}")
    if k.dtype != v.dtype or not k.is_floating_point():
        raise ValueError(f"write_kv_cache: k and v must share one float dtype, got {k.dtype} and {v.dtype}")
    check_scales(k_cache, v_cache, k_scale, v_scale, "write_kv_cache")
    devs = {t.device for t in (k, v, slot_mapping, k_cache, v_cache, k_scale, v_scale) if t is not None}
    if len(devs) != 1:
        raise ValueError(f"all tensors must be on one device, got {devs}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("caches must be contiguous and k/v must have unit stride in D")
    if slot_mapping.stride(0) != 1 and slot_mapping.numel() > 1:
        raise ValueError("write_kv_cache: slot_mapping must be contiguous (the kernel reads slot t at offset t); "
                         "pass slot_mapping.contiguous()")
    if values_checkable(slot_mapping):  # reads the slots: CPU only, no device sync on CUDA
        check_slots("write_kv_cache", slot_mapping, k_cache.shape[0] * k_cache.shape[1])


def write_kv_cache(k, v, slot_mapping, k_cache, v_cache, k_scale=None, v_scale=None) -> None:
    """Store new k, v [T, Hkv, D] at slot_mapping [T] of the paged cache (in place; FP8 caches quantise)."""
    _check(k, v, slot_mapping, k_cache, v_cache, k_scale, v_scale)
    t, h, d = k.shape
    if t == 0:
        return
    quant = k_cache.dtype == FP8
    pdl, launch = pdl_args(k)
    write_kv_cache_kernel[(t,)](k, v, slot_mapping, k_cache, v_cache, k_scale if quant else k_cache,
                                v_scale if quant else v_cache, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                                H=h, D=d, BLOCK_H=triton.next_power_of_2(h), BLOCK_D=triton.next_power_of_2(d),
                                QUANT=quant, PDL=pdl, **launch)


def write_kv_cache_ref(k, v, slot_mapping, k_cache, v_cache, k_scale=None, v_scale=None) -> None:
    """The same in plain PyTorch (index_copy into the flattened [num_blocks * block_size, Hkv, D] view)."""
    _check(k, v, slot_mapping, k_cache, v_cache, k_scale, v_scale)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k, v = k[keep], v[keep]
    flat = lambda c: c.view(-1, *c.shape[2:])  # noqa: E731  [num_blocks*block_size, Hkv(, D)]
    if k_cache.dtype == FP8:
        (kq, ks), (vq, vs) = quantize_fp8_ref(k), quantize_fp8_ref(v)
        byte = lambda c: flat(c).view(torch.uint8)  # noqa: E731  index_put on raw bytes: works for fp8 everywhere
        byte(k_cache)[slots], byte(v_cache)[slots] = kq.view(torch.uint8), vq.view(torch.uint8)
        flat(k_scale)[slots], flat(v_scale)[slots] = ks, vs
    else:
        flat(k_cache)[slots], flat(v_cache)[slots] = k.to(k_cache.dtype), v.to(v_cache.dtype)
