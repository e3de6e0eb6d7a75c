"""FP8 decode attention with Triton's conversions against the bit-moving conversion (fp8_bits), beside bf16.

    python -m phase3_paged_fp8.bench_fp8_bits --name fp8_bits_h100      # GPU, ~2 min

At the serving engine's shapes (TinyLlama's heads: 32 q / 4 KV, d=64, 16-token blocks; B=1 .. 1,024 sequences of
192 .. 8K cached tokens) each row times `paged_decode` with its defaults three ways in one process: the bf16 pool,
the FP8 pool converting with `.to()` (TITAN_FP8_CVT=cvt) and the FP8 pool converting by moving bits (the default),
plus a few tiles of the bits path on the wide batches (the defaults were tuned for the converting kernel). Bytes
are the cache's (values + per-token scales) read once; the copy ceiling is measured in the same process.
"""
from __future__ import annotations

import argparse
import os

import torch
from tqdm.auto import tqdm

from common.bench import write_result
from phase3_paged_fp8 import bench_utils as U
from phase3_paged_fp8.cache_write import FP8
from phase3_paged_fp8.fp8_bits import ENV
from phase3_paged_fp8.paged_decode import paged_decode

SHAPES = [(1, 256), (1, 2048), (64, 512), (32, 8192), (256, 512), (448, 400), (512, 1024), (1024, 192)]
WIDE_TILES = [(64, 2, 3), (64, 4, 3), (128, 4, 2), (128, 4, 3), (128, 8, 2), (256, 8, 2)]  # (block_n, warps, stages)


def _time(q, cache, mode: str | None, **knobs) -> float:
    kc, vc, ks, vs, bt, lens = cache
    if mode is not None:
        os.environ[ENV] = mode  # read at launch, so at the graph's capture
    try:
        return U.gpu_ms(lambda: paged_decode(q, kc, vc, bt, lens, ks, vs, **knobs))
    finally:
        os.environ.pop(ENV, None)


def row(b: int, ctx: int, hq: int = 32, hkv: int = 4, d: int = 64, bs: int = 16, tiles: bool = True) -> dict:
    q = torch.randn(b, hq, d, device=U.DEV, dtype=torch.bfloat16)
    bf = U.make_paged(b, ctx, hkv, d, bs, torch.bfloat16)
    f8 = U.make_paged(b, ctx, hkv, d, bs, FP8)
    nb_bf, nb_f8 = U.kv_bytes(bf[0], None, b, ctx), U.kv_bytes(f8[0], f8[2], b, ctx)
    out = {"b": b, "ctx": ctx, "bytes_bf16": nb_bf, "bytes_fp8": nb_f8}
    out["bf16_us"] = _time(q, bf, None) * 1e3
    out["fp8_cvt_us"] = _time(q, f8, "cvt") * 1e3
    out["fp8_bits_us"] = _time(q, f8, "bits") * 1e3
    for k, nb in (("bf16", nb_bf), ("fp8_cvt", nb_f8), ("fp8_bits", nb_f8)):
        out[f"{k}_tb_s"] = nb / out[f"{k}_us"] / 1e6
    if tiles and b * hkv >= 256:  # the wide batches: does another tile suit the bits path better?
        out["fp8_bits_tiles"] = {}
        for bn, w, st in WIDE_TILES:
            try:
                us = _time(q, f8, "bits", block_n=bn, num_warps=w, num_stages=st) * 1e3
            except Exception as e:  # noqa: BLE001  (a tile that does not fit shared memory: recorded, not fatal)
                out["fp8_bits_tiles"][f"{bn}x{w}x{st}"] = f"{type(e).__name__}"
                continue
            out["fp8_bits_tiles"][f"{bn}x{w}x{st}"] = us
        best = min((v, k) for k, v in out["fp8_bits_tiles"].items() if isinstance(v, float))
        out["fp8_bits_best_tile"], out["fp8_bits_best_us"] = best[1], best[0]
    out["bits_speedup_over_cvt"] = out["fp8_cvt_us"] / out["fp8_bits_us"]
    out["fp8_bits_speedup_over_bf16"] = out["bf16_us"] / out["fp8_bits_us"]
    return out


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--name", default="fp8_bits_gpu", help="results/<name>.json")
    ap.add_argument("--smoke", action="store_true", help="one toy shape on the CPU interpreter (checks the script)")
    args = ap.parse_args(argv)
    if args.smoke:
        U.DEV = "cpu"
        shapes, ceiling, gpu = [(2, 40)], None, "cpu (smoke: not a measurement)"
    elif not torch.cuda.is_available():
        raise SystemExit("bench_fp8_bits needs a CUDA GPU (or --smoke on the CPU interpreter)")
    else:
        shapes, ceiling, gpu = SHAPES, U.copy_ceiling(), torch.cuda.get_device_name(0)
    rows = []
    for b, ctx in tqdm(shapes, desc="shapes"):
        rows.append(row(b, ctx, tiles=not args.smoke))
        r = rows[-1]
        print(f"B={b:5d} ctx={ctx:5d}: bf16 {r['bf16_us']:8.1f} us ({r['bf16_tb_s']:.2f} TB/s)  fp8 cvt "
              f"{r['fp8_cvt_us']:8.1f} ({r['fp8_cvt_tb_s']:.2f})  fp8 bits {r['fp8_bits_us']:8.1f} "
              f"({r['fp8_bits_tb_s']:.2f})  bits/cvt {r['bits_speedup_over_cvt']:.2f}x  "
              f"bits over bf16 {r['fp8_bits_speedup_over_bf16']:.2f}x", flush=True)
    payload = {"gpu": gpu, "heads": "32q/4kv d64, 16-token blocks", "copy_ceiling": ceiling, "rows": rows}
    write_result("phase3_paged_fp8", args.name, payload)
    return payload


if __name__ == "__main__":
    main()
