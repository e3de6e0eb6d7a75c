"""Registers, spills and programs per SM of the decode-attention kernels on Hopper, compiled on the CPU machine.

    python -m phase4_scheduler.decode_resources      # writes results/decode_attention_resources_cpu.json

Why: on the H200 the fused decode attention (decode_attention.py) beat the unfused sequence at B=1-64 but was 7-11%
slower at B=256-1,024 (results/decode_attention_ablation_h200.json), where the kernel runs 2-warp programs over
64-token tiles and the attention is memory-bound: how many programs share an SM (bytes in flight) is set by
registers per thread. This compiles phase 3's `paged_decode_kernel` and the fused kernel at the engine's tiles for
sm_90a (common/ptxas.py) and reports both. TinyLlama shapes (32 q / 4 KV heads x 64), bf16, one split.
"""
from __future__ import annotations

import os
import sys

BF = "*bf16"
FUSED_SIG = dict(q_ptr=BF, k_ptr=BF, v_ptr=BF, pos_ptr="*i64", cs_ptr="*fp32", slot_ptr="*i64", kc_ptr=BF, vc_ptr=BF,
                 ks_ptr=BF, vs_ptr=BF, bt_ptr="*i32", lens_ptr="*i32", o_ptr=BF, po_ptr="*fp32", lse_ptr="*fp32", cnt_ptr="*i32",
                 stride_qt="i32", stride_qh="i32", stride_kt="i32", stride_kh="i32", stride_vt="i32",
                 stride_vh="i32", stride_cs="i32", stride_bt="i32", stride_ot="i32", stride_oh="i32",
                 sm_scale_log2="fp32", num_splits="i32", min_tps="i32")
# over phase 3's FP8 cache: e4m3 values, fp16 scales (QUANT)
FUSED_FP8_SIG = dict(FUSED_SIG, kc_ptr="*fp8e4nv", vc_ptr="*fp8e4nv", ks_ptr="*fp16", vs_ptr="*fp16")
PHASE3_SIG = dict(q_ptr=BF, kc_ptr=BF, vc_ptr=BF, ks_ptr=BF, vs_ptr=BF, bt_ptr="*i32", lens_ptr="*i32", o_ptr=BF,
                  po_ptr="*fp32", lse_ptr="*fp32", stride_qb="i32", stride_qh="i32", stride_bt="i32",
                  stride_ob="i32", stride_oh="i32", sm_scale_log2="fp32", num_splits="i32", min_tps="i32")
# (label, block_n, num_warps, num_stages): phase 3's default_tile for >= 512 pairs, 64-511 pairs, B <= 16
TILES = [("B x Hkv >= 512", 64, 2, 3), ("64 <= B x Hkv < 512", 64, 4, 2), ("B x Hkv < 64", 32, 4, 2)]


def _divisible(sig: dict) -> list[str]:
    return [n for n, t in sig.items() if t.startswith("*") or n.startswith("stride")]


def rows() -> list[dict]:
    from common.ptxas import hopper_resources, programs_per_sm
    from phase3_paged_fp8.paged_decode import paged_decode_kernel
    from phase4_scheduler.decode_attention import decode_attention_kernel

    out = []
    for label, bn, warps, stages in TILES:
        base = dict(BS=16, HKV=4, G=8, G_PAD=16, BLOCK_N=bn, SPLIT=False, DOT_F32=False, PREC="tf32", PDL=True)
        variants = [("phase 3 paged_decode (unfused: + rope, write, reduce kernels)", paged_decode_kernel, PHASE3_SIG,
                     dict(base, D=64, BLOCK_D=64, QUANT=False))]
        for rope in (True, False):
            for pre in (False, True):
                variants.append((f"fused, RoPE {'on' if rope else 'off'}, prefetch {'on' if pre else 'off'}",
                                 decode_attention_kernel, FUSED_SIG,
                                 dict(base, GR=8, HALF=32, S_PAD=1, S_CHUNK=1, ROPE=rope, PREFETCH=pre)))
        variants.append(("fused over an FP8 cache, RoPE on, prefetch on", decode_attention_kernel, FUSED_FP8_SIG,
                         dict(variants[2][3], QUANT=True)))
        phase3_regs = None
        variants.append(("fused, RoPE on, prefetch off, registers capped at phase 3's", decode_attention_kernel,
                         FUSED_SIG, variants[1][3]))
        for i, (name, kernel, sig, consts) in enumerate(variants):
            cap = phase3_regs if i == len(variants) - 1 else None  # only the last row is capped
            r = hopper_resources(kernel, sig, consts, warps, stages, divisible=_divisible(sig), maxnreg=cap)
            phase3_regs = phase3_regs or r["registers"]  # the first row is phase 3's kernel
            out.append({"regime": label, "kernel": name, "block_n": bn, "num_warps": warps, "num_stages": stages,
                        "maxnreg": cap,
                        "registers": r["registers"], "spill_store_bytes": r["spill_store_bytes"],
                        "shared_bytes": r["shared_bytes"], "ptxas_error": r["ptxas_error"],
                        "programs_per_sm": programs_per_sm(r["registers"] or 255, warps, r["shared_bytes"])})
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(
        [] if argv is None else argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter does not compile kernels")
        return 1
    from common.bench import write_result

    res = rows()
    for r in res:
        print(f"{r['regime']:22s} {r['kernel']:62s} {r['registers']:4} regs, {r['spill_store_bytes']} B spilled, "
              f"{r['shared_bytes'] // 1024} KiB smem -> {r['programs_per_sm']} programs / SM")
    write_result("phase4_scheduler", "decode_attention_resources_cpu",
                 {"target": "sm_90a (compiled on CPU)", "shapes": "32q/4kv x 64, bf16, block 16", "rows": res})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
