"""e4m3 -> bf16 by moving bits: four integer instructions per two values, instead of the three conversions that bound
phase 3's FP8 attention kernels.

    from phase3_paged_fp8.fp8_bits import e4m3_to_bf16_lowered, LOWER_EXP
    k = e4m3_to_bf16_lowered(tl.load(kc_ptr + off))   # in a kernel: bf16 equal to k * 2**-LOWER_EXP, exactly

NOTE (why). Triton lowers `fp8_tile.to(tl.bfloat16)` to one `cvt.rn.f16x2.e4m3x2` per pair and then one
`cvt.rn.bf16.f16` per value: 1.5 conversions a value, and conversions issue at a fraction of the integer rate. In a
decode step the FP8 pool's kernel converts every K and V byte once per (sequence, KV head): at B=1,024 with 192
cached tokens that made it slower than bf16 although it reads half the bytes (68 vs 58 us a layer on the H200,
phase 4's decode_sweep_h200.json).

NOTE (the trick). e4m3 is s.eeee.mmm with bias 7; bf16 is s.eeeeeeee.mmmmmmm with bias 127. Put the byte's sign on
bf16's sign bit and its seven other bits on bf16's bits 4..10 (the low four exponent bits and the top three
mantissa bits): the bf16 read back is the e4m3 value times 2^(7 - 127) = 2^-120, EXACTLY, for every finite code --
normal values keep their exponent field (offset by 120), subnormals (eeee = 0) become bf16 subnormals with the same
mantissa, zeros stay (signed) zeros. Only the two NaN codes (0x7f, 0xff) come out as finite numbers; the cache
writer never stores them (its scales map each token's absmax to 448). Per 32-bit register of four bytes:
`prmt` spreads bytes 0, 1 to the high byte of each 16-bit half, `and` drops the signs, `shr 4` moves the rest into
place, `lop3` puts the signs back -- twice (bytes 2, 3). Triton's inline assembly with pack=4 hands each instance one
register of four bytes and takes back two registers of two bf16 each (the same shape as Triton's own fp8e4b15 test).

NOTE (using the lowered values). They are ~2^-111 at most, so a kernel lifts its other operand instead of scaling the
tile: q is multiplied by 2^Q_LIFT before its bf16 rounding (a power of two: the same rounding as before), so q . k'
= (q . k) 2^-(LOWER_EXP - Q_LIFT), and the per-token K scale the kernel applies to the scores anyway carries the
remaining 2^UNLIFT. Likewise p (already multiplied by the V scale) is lifted by 2^Q_LIFT before its bf16 rounding and
the output divides by 2^-UNLIFT at the end. Every value the tensor cores see or produce stays a normal number for any
realistic q (|q| < 2^60) and every p above 2^-60, so the scores and outputs equal the converting kernel's up to
fp32 summation order. Under the Triton interpreter (which runs no PTX) kernels use `.to()` instead.
"""
from __future__ import annotations

import os

import numpy as np
import triton
import triton.language as tl

LOWER_EXP = 120  # the lowered bf16 reads as value * 2^-LOWER_EXP
Q_LIFT = 64  # q (and p) are multiplied by 2^Q_LIFT before their bf16 rounding
UNLIFT = LOWER_EXP - Q_LIFT  # 56: scores and outputs are multiplied back by 2^UNLIFT
Q_LIFT_F = tl.constexpr(2.0 ** Q_LIFT)
UNLIFT_F = tl.constexpr(2.0 ** UNLIFT)

ENV = "TITAN_FP8_CVT"  # "bits" (default): this module's conversion; "cvt": Triton's .to() (the A/B switch)


def bits_enabled(interpreting: bool) -> bool:
    """Whether FP8 kernels use the bit conversion: not under the interpreter, not with TITAN_FP8_CVT=cvt. Read at
    launch time (a CUDA graph keeps what was true when it was captured)."""
    mode = os.environ.get(ENV, "bits").strip().lower()
    if mode not in ("bits", "cvt"):
        raise ValueError(f"{ENV} must be 'bits' or 'cvt', got {mode!r}")
    return mode == "bits" and not interpreting


@triton.jit
def e4m3_to_bf16_lowered(x):
    """A float8e4nv tensor -> bf16 equal to x * 2^-LOWER_EXP (module NOTE). Elements per thread must be a multiple
    of 4 (any tile of 64+ elements per 32 threads)."""
    b = x.to(tl.uint8, bitcast=True)
    return tl.inline_asm_elementwise(
        asm="{ .reg .b32 z, a0, a1, b0, b1;\n"
            "mov.b32 z, 0;\n"
            "prmt.b32 a0, z, $2, 0x5040;\n"  # bytes 0, 1 -> bits 8..15, 24..31
            "prmt.b32 a1, z, $2, 0x7060;\n"  # bytes 2, 3 -> bits 8..15, 24..31
            "and.b32 b0, a0, 0x7fff7fff;\n"
            "and.b32 b1, a1, 0x7fff7fff;\n"
            "shr.b32 b0, b0, 4;\n"
            "shr.b32 b1, b1, 4;\n"
            "lop3.b32 $0, b0, 0x80008000, a0, 0xf8;\n"  # b | (0x80008000 & a): the signs back
            "lop3.b32 $1, b1, 0x80008000, a1, 0xf8;\n"
            "}",
        constraints="=r,=r,r", args=[b], dtype=tl.bfloat16, is_pure=True, pack=4)


def lowered_bits_ref(codes: np.ndarray) -> np.ndarray:
    """The same bit moves in numpy on uint8 codes -> uint16 bf16 bit patterns (what the PTX computes per byte)."""
    c = codes.astype(np.uint16)
    return ((c & 0x80) << 8) | ((c & 0x7F) << 4)
