"""The bit-moving e4m3 -> bf16 conversion (fp8_bits): the algebra for all 256 codes on the CPU, the compiled kernels'
instructions for sm_90 on the CPU (ptxas + cuobjdump from the Triton wheel), and the switch. The PTX itself runs in
test_gpu.py (all 256 codes through a kernel; kernels with and without it against each other)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from phase3_paged_fp8 import fp8_bits
from phase3_paged_fp8.cache_write import FP8
from phase3_paged_fp8.paged_decode import use_bits

ROOT = Path(__file__).resolve().parents[2]


def test_lowered_bits_are_the_value_times_2_to_minus_120_for_every_finite_code():
    codes = np.arange(256, dtype=np.uint8)
    want = torch.from_numpy(codes).view(FP8).double()
    got = torch.from_numpy(fp8_bits.lowered_bits_ref(codes).view(np.int16)).view(torch.bfloat16).double()
    finite = torch.isfinite(want)
    assert int((~finite).sum()) == 2  # 0x7f and 0xff: e4m3's NaNs, which the cache writer never stores
    assert torch.equal(got[finite] * 2.0 ** fp8_bits.LOWER_EXP, want[finite])
    assert torch.equal(torch.signbit(got[finite]), torch.signbit(want[finite]))  # -0 stays -0
    sub = (codes & 0x78) == 0  # subnormals (exponent field 0) land on bf16 subnormals: still exact
    assert sub.sum() == 16 and torch.equal(got[torch.from_numpy(sub)] * 2.0 ** 120, want[torch.from_numpy(sub)])


def test_lift_constants_cancel():
    assert fp8_bits.Q_LIFT + fp8_bits.UNLIFT == fp8_bits.LOWER_EXP
    assert float(fp8_bits.Q_LIFT_F.value) * float(fp8_bits.UNLIFT_F.value) == 2.0 ** fp8_bits.LOWER_EXP


def test_switch(monkeypatch):
    monkeypatch.delenv(fp8_bits.ENV, raising=False)
    assert fp8_bits.bits_enabled(False) and not fp8_bits.bits_enabled(True)
    monkeypatch.setenv(fp8_bits.ENV, "cvt")
    assert not fp8_bits.bits_enabled(False)
    monkeypatch.setenv(fp8_bits.ENV, "fast")
    with pytest.raises(ValueError, match="'bits' or 'cvt'"):
        fp8_bits.bits_enabled(False)


def test_use_bits_needs_four_values_a_thread(monkeypatch):
    monkeypatch.delenv(fp8_bits.ENV, raising=False)
    monkeypatch.setattr("phase3_paged_fp8.paged_decode.interpreting", lambda: False)
    assert use_bits(64, 64, 2, torch.bfloat16) and use_bits(128, 64, 4, torch.bfloat16)
    assert not use_bits(16, 16, 4, torch.bfloat16)  # 2 values a thread
    assert not use_bits(64, 64, 2, torch.float32)  # fp32 queries multiply in fp32


SASS_OF_FP8_DECODE = r'''
import collections, re, subprocess, sys, tempfile, os
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from phase3_paged_fp8 import paged_decode as pd, paged_prefill as pp

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")

def sass(fn, sig, consts, warps, stages):
    # pointers and strides 16-divisible, as Triton specialises them at a real launch (so the loads vectorise)
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(sig) if n.endswith("_ptr") or n.startswith("stride")}
    k = triton.compile(ASTSource(fn=fn, signature={**sig, **{c: "constexpr" for c in consts}}, constexprs=consts,
                                 attrs=attrs), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": warps, "num_stages": stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    out = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True)
    os.unlink(f.name)
    return collections.Counter(re.findall(r"\b(F2FP?\.[A-Z0-9_.]+|H[G]?MMA\.[0-9A-Za-z_.]+)", out.stdout))

fp8 = "*fp8e4nv"
dec = dict(q_ptr="*bf16", kc_ptr=fp8, vc_ptr=fp8, ks_ptr="*fp16", vs_ptr="*fp16", bt_ptr="*i32", lens_ptr="*i32",
           o_ptr="*bf16", po_ptr="*fp32", lse_ptr="*fp32", stride_qb="i32", stride_qh="i32", stride_bt="i32",
           stride_ob="i32", stride_oh="i32", sm_scale_log2="fp32", num_splits="i32", min_tps="i32")
pre = dict(q_ptr="*bf16", kc_ptr=fp8, vc_ptr=fp8, ks_ptr="*fp16", vs_ptr="*fp16", bt_ptr="*i32", cu_ptr="*i32",
           lens_ptr="*i32", o_ptr="*bf16", stride_qt="i32", stride_qh="i32", stride_ot="i32", stride_oh="i32",
           stride_bt="i32", sm_scale_log2="fp32", num_seqs="i32")
for bits in (False, True):
    c = dict(BS=16, HKV=4, G=8, G_PAD=16, D=64, BLOCK_D=64, BLOCK_N=64, SPLIT=False, QUANT=True, DOT_F32=False,
             PREC="tf32", PDL=True, BITS=bits)
    print("decode", bits, dict(sass(pd.paged_decode_kernel, dec, c, 2, 3)))
    c = dict(BS=16, HKV=4, G=8, D=64, BLOCK_D=64, BLOCK_M=64, BLOCK_N=64, QUANT=True, DOT_F32=False, PREC="tf32",
             SKIP_SINGLE=False, FLAT=True, BITS=bits)
    print("prefill", bits, dict(sass(pp.paged_prefill_kernel, pre, c, 4, 2)))
'''


def test_bits_kernels_compile_for_h100_without_conversions():
    """Compiled for sm_90 (the engine's wide-batch decode tile and the prefill tile): Triton's FP8 path has the
    e4m3 -> f16 unpacks and f16 -> bf16 conversions in its SASS, the bits path none, and both multiply on the bf16
    tensor cores (mma.sync for decode, wgmma for prefill)."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run([sys.executable, "-c", SASS_OF_FP8_DECODE], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {}
    for line in run.stdout.splitlines():
        kind, bits, counts = line.split(" ", 2)
        rows[(kind, bits == "True")] = eval(counts)  # noqa: S307  (our own subprocess's dict repr)
    for kind in ("decode", "prefill"):
        cvt, bits = rows[(kind, False)], rows[(kind, True)]
        unpack = lambda c: sum(v for k, v in c.items() if "E4M3" in k or k.startswith("F2F.BF16.F16"))  # noqa: E731
        assert unpack(cvt) > 0, (kind, cvt)
        assert unpack(bits) == 0, (kind, bits)
        assert any("MMA" in k and "BF16" in k for k in bits), (kind, bits)


def test_bench_script_smoke(tmp_path, monkeypatch):
    """bench_fp8_bits --smoke runs the whole script on the interpreter: one row with all three timings, the switch
    left as it was."""
    from phase3_paged_fp8 import bench_fp8_bits, bench_utils

    monkeypatch.setattr(bench_utils, "DEV", bench_utils.DEV)  # --smoke sets it to "cpu": restored afterwards
    monkeypatch.setenv("TITAN_RESULTS_DIR", str(tmp_path))
    monkeypatch.delenv(fp8_bits.ENV, raising=False)
    out = bench_fp8_bits.main(["--smoke", "--name", "fp8_bits_smoke"])
    (r,) = out["rows"]
    assert r["b"] == 2 and r["bytes_fp8"] < r["bytes_bf16"]
    assert all(r[k] > 0 for k in ("bf16_us", "fp8_cvt_us", "fp8_bits_us"))
    assert (tmp_path / "fp8_bits_smoke.json").exists() and fp8_bits.ENV not in os.environ


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this runs the kernel (device_session.sh decodencu)")
def test_profile_decode_needs_cuda_and_says_so():
    from phase3_paged_fp8 import profile_decode

    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        profile_decode.main(["--dtype", "bf16"])
