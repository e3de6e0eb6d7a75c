"""Pinned skinny-GEMV tiles (skinny_gemm.PINNED_TILES / TITAN_GEMV_TILES) and the in-step tile sweep's helpers."""
import pytest
import torch

from common.config import PRESETS
from phase4_scheduler import skinny_gemm as sg
from phase4_scheduler.sweep_gemv_chain import CANDIDATES, shapes, tile_string


def test_parse_tiles_round_trips_and_refuses_nonsense():
    spec = "2048x2048x0=2,2048,4;2560x2048x1=4,1024,8;11264x2048x1=4,2048,8,4"
    tiles = sg.parse_tiles(spec)
    assert tiles == {(2048, 2048, 0): (2, 2048, 4, 0), (2560, 2048, 1): (4, 1024, 8, 0),
                     (11264, 2048, 1): (4, 2048, 8, 4)}  # a fourth field pins the persistent kernel
    assert sg.parse_tiles(tile_string(tiles)) == tiles and sg.parse_tiles("") == {}
    for bad in ("2048x2048=2,2048,4", "2048x2048x0=3,2048,4", "2048x2048x5=2,2048,4", "a=b", "8x8x0=2,16,4,-1",
                "8x8x0=2,16", "8x8x0=2,16,4,2,1"):
        with pytest.raises(ValueError, match="TITAN_GEMV_TILES"):
            sg.parse_tiles(bad)


def spy_launches(monkeypatch, kernel_name: str, what, run: bool = True) -> list:
    """Replace skinny_gemm.<kernel_name> by a launcher that records what(grid, kwargs) and launches the real one
    (unless run=False: then it only records)."""
    launched, real = [], getattr(sg, kernel_name)

    class Spy:
        def __getitem__(self, grid):
            def launch(*a, **kw):
                launched.append(what(grid, kw))
                return real[grid](*a, **kw) if run else None
            return launch

    monkeypatch.setattr(sg, kernel_name, Spy())
    return launched


def test_a_pinned_tile_is_the_one_launched_and_gives_the_same_numbers(monkeypatch):
    n, k = 24, 64
    w, x = torch.randn(n, k), torch.randn(1, k)
    launched = spy_launches(monkeypatch, "skinny_gemv_kernel",
                            lambda grid, kw: (kw["BLOCK_N"], kw["BLOCK_K"], kw["num_warps"]))
    monkeypatch.setitem(sg.PINNED_TILES, (n, k, 0), (2, 16, 2))
    torch.testing.assert_close(sg.linear_small_m(x, w), sg.linear_small_m_ref(x, w), atol=1e-5, rtol=1e-5)
    assert launched == [(2, 16, 2)]
    monkeypatch.setenv(sg.PERSISTENT_ENV, "1")  # a pinned regular tile wins over the persistent switch
    sg.linear_small_m(x, w)
    assert launched == [(2, 16, 2)] * 2


def test_a_pinned_persistent_tile_launches_the_persistent_kernel(monkeypatch):
    n, k = 40, 48
    w, x = torch.randn(n, k), torch.randn(1, k)
    grids = spy_launches(monkeypatch, "skinny_gemv_persistent_kernel",
                         lambda grid, kw: (grid(kw), kw["BLOCK_N"], kw["BLOCK_K"], kw["PPS"]))
    monkeypatch.setitem(sg.PINNED_TILES, (n, k, 0), (2, 16, 2, 1))  # 20 slabs over 4 SMs x 1: 4 programs x 5
    torch.testing.assert_close(sg.linear_small_m(x, w), sg.linear_small_m_ref(x, w), atol=1e-5, rtol=1e-5)
    assert grids == [((4,), 2, 16, 1)]


@pytest.mark.parametrize("slabs,sms,pps,want", [(2816, 132, 4, 470), (1024, 132, 8, 1024), (20, 4, 1, 4),
                                                (5, 4, 2, 5), (1, 132, 8, 1), (2000, 132, 8, 1000)])
def test_persistent_grid_balances_slabs(slabs, sms, pps, want):
    g = sg.persistent_grid(slabs * 4, 4, pps, sms)
    assert g == want and g <= sms * pps
    per = -(-slabs // g)  # every program walks `per` slabs; the grid leaves less than one round idle
    assert (per - 1) * g < slabs <= per * g


def test_sweep_shapes_and_candidates():
    sh = shapes(PRESETS["tinyllama-1.1b"], silu_epilogue=False)
    assert sh == {"qkv": (2560, 2048, 1), "o": (2048, 2048, 0), "gate_up": (11264, 2048, 1), "down": (2048, 5632, 2),
                  "lm_head": (32000, 2048, 0)}
    assert shapes(PRESETS["tinyllama-1.1b"])["down"] == (2048, 5632, 0)  # SiLU in gate_up's epilogue: a plain GEMV
    assert all(bn & (bn - 1) == 0 and bk & (bk - 1) == 0 and pps >= 0 for bn, bk, _, pps in CANDIDATES)
    assert {pps > 0 for *_, pps in CANDIDATES} == {True, False}  # both kernels are swept


def test_sweep_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    from phase4_scheduler.sweep_gemv_chain import main
    with pytest.raises(SystemExit, match="needs CUDA"):
        main(["--random-weights"])


def test_prefetch_budget_is_split_over_rows_and_capped(monkeypatch):
    """TITAN_GEMV_PREFETCH_MB: the budget over N rows, in whole 128-byte lines, never past the row; off without a
    budget or without PDL (the prefetch sits before the PDL wait, and only pays while a previous kernel runs)."""
    monkeypatch.setattr(sg, "interpreting", lambda: False)
    monkeypatch.delenv(sg.PREFETCH_ENV, raising=False)
    assert sg.prefetch_bytes(2048, 2048, 2, True) == 0
    monkeypatch.setenv(sg.PREFETCH_ENV, "16")
    assert sg.prefetch_bytes(2048, 2048, 2, True) == 4096  # o: 8 MB < 16 MB, the whole 4 KB row
    assert sg.prefetch_bytes(11264, 2048, 2, True) == 16 * 2 ** 20 // 11264 // 128 * 128 == 1408  # gate_up: a third
    assert sg.prefetch_bytes(32000, 2048, 2, True) == 512  # lm_head: 16 MB / 32000 rows -> 4 lines
    assert sg.prefetch_bytes(2048, 2048, 2, False) == 0
    monkeypatch.setenv(sg.PREFETCH_ENV, "lots")
    with pytest.raises(ValueError, match="TITAN_GEMV_PREFETCH_MB"):
        sg.prefetch_bytes(2048, 2048, 2, True)


def test_prefetch_is_off_under_the_interpreter(monkeypatch):
    monkeypatch.setenv(sg.PREFETCH_ENV, "16")
    monkeypatch.setattr(sg, "interpreting", lambda: True)
    assert sg.prefetch_bytes(2048, 2048, 2, True) == 0


@pytest.mark.slow
def test_prefetch_compiles_to_one_bulk_l2_prefetch_per_row_for_hopper():
    """Compiled for sm_90a here (no GPU): with PREFETCH_BYTES the GEMV carries cp.async.bulk.prefetch.L2 before its
    griddepcontrol.wait, without it none; no spills either way."""
    import json
    import os
    import subprocess
    import sys

    code = '''
import json
from common.ptxas import hopper_resources
from phase4_scheduler import skinny_gemm as sg
bf = "*bf16"
sig = dict(x_ptr=bf, r_ptr=bf, nw_ptr=bf, ro_ptr=bf, w_ptr=bf, out_ptr=bf, pos_ptr="*i64", cs_ptr="*fp32", N="i32",
           stride_wn="i32", eps="fp32", stride_cs="i32", ROPE_ROWS="i32")
out = []
for pf, rope in [(0, False), (4096, False), (1408, True)]:
    r = hopper_resources(sg.skinny_gemv_kernel, sig, dict(K=2048, MODE=1, HAS_RES=True, ROPE=rope, HALF=32, BLOCK_N=4,
                         BLOCK_K=1024, PDL=True, PREFETCH_BYTES=pf), 4, 1, divisible=["w_ptr", "stride_wn"])
    ptx = r["ptx"]
    out.append(dict(pf=pf, regs=r["registers"], spill=r["spill_store_bytes"], n=ptx.count("cp.async.bulk.prefetch.L2"),
                    before=ptx.find("cp.async.bulk.prefetch.L2") < ptx.find("griddepcontrol.wait")))
print(json.dumps(out))
'''
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    off, on, rope = json.loads(p.stdout.strip().splitlines()[-1])
    assert off["n"] == 0 and on["n"] >= 1 and rope["n"] >= 1 and on["before"] and rope["before"], (off, on, rope)
    assert off["spill"] == on["spill"] == rope["spill"] == 0


@pytest.mark.gpu
@pytest.mark.parametrize("n, k", [(2048, 2048), (11264, 2048), (2048, 5632)])
def test_prefetch_leaves_the_numbers_bitwise_unchanged(monkeypatch, n, k):
    """The L2 prefetch is a hint: the GEMV's output with a budget is bitwise the one without (pinned tile, so the
    same kernel runs both times), on the GPU where PDL and the PTX are live."""
    g = torch.Generator(device="cuda").manual_seed(n + k)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16, generator=g)
    monkeypatch.setitem(sg.PINNED_TILES, (n, k, 0), (4, 1024, 4))
    monkeypatch.delenv(sg.PREFETCH_ENV, raising=False)
    base = sg.linear_small_m(x, w)
    monkeypatch.setenv(sg.PREFETCH_ENV, "16")
    assert sg.prefetch_bytes(n, k, 2, True) > 0
    torch.testing.assert_close(sg.linear_small_m(x, w), base, atol=0, rtol=0)


def test_step_tiles_are_whole_rows_and_the_autotune_switch_is_checked(monkeypatch):
    """The M == 1 default (measured in the H100's B=1 step): one K tile up to 2048, 2 rows / 4 warps when narrow,
    4 rows / 8 warps when wide or K > 2048 (TinyLlama: qkv, o narrow; gate_up, down, lm_head wide)."""
    sh = shapes(PRESETS["tinyllama-1.1b"])
    assert {name: sg.step_tile(n, k) for name, (n, k, _) in sh.items()} == {
        "qkv": (2, 2048, 4), "o": (2, 2048, 4), "gate_up": (4, 2048, 8), "down": (4, 2048, 8),
        "lm_head": (4, 2048, 8)}
    assert sg.step_tile(1536, 576) == (2, 1024, 4)  # SmolLM2-135M's qkv-like shape: one tile, masked to K
    monkeypatch.delenv(sg.AUTOTUNE_ENV, raising=False)
    assert not sg.autotune_on()
    monkeypatch.setenv(sg.AUTOTUNE_ENV, "1")
    assert sg.autotune_on()
    monkeypatch.setenv(sg.AUTOTUNE_ENV, "on")
    with pytest.raises(ValueError, match="TITAN_GEMV_AUTOTUNE must be 0 or 1"):
        sg.autotune_on()


def test_the_gpu_dispatch_takes_step_tile_unless_autotune_or_a_pin(monkeypatch):
    """The launch decision of an M == 1 GEMV off the interpreter (as on a GPU; nothing is launched here): the
    step_tile rule by default, the autotuner with TITAN_GEMV_AUTOTUNE=1, a pinned tile over both."""
    monkeypatch.setattr(sg, "interpreting", lambda: False)
    monkeypatch.delenv(sg.AUTOTUNE_ENV, raising=False)
    monkeypatch.delenv(sg.PERSISTENT_ENV, raising=False)
    tile = lambda grid, kw: (kw["BLOCK_N"], kw["BLOCK_K"], kw["num_warps"])  # noqa: E731
    fixed = spy_launches(monkeypatch, "skinny_gemv_kernel", tile, run=False)
    tuned = spy_launches(monkeypatch, "skinny_gemv_tuned", lambda grid, kw: "tuned", run=False)
    n, k = 11264, 2048
    x, w = torch.zeros(1, k), torch.zeros(n, k)
    sg._skinny("t", x, w, 0, k)
    sg._skinny("t", x, w, 0, k, tune=False)
    monkeypatch.setenv(sg.AUTOTUNE_ENV, "1")
    sg._skinny("t", x, w, 0, k)
    monkeypatch.setitem(sg.PINNED_TILES, (n, k, 0), (2, 1024, 4, 0))
    sg._skinny("t", x, w, 0, k)
    assert fixed == [sg.step_tile(n, k), (8, 512, 4), (2, 1024, 4)] and tuned == ["tuned"]
