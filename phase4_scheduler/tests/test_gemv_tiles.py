"""Pinned skinny-GEMV tiles (skinny_gemm.PINNED_TILES / TITAN_GEMV_TILES) and the in-step tile sweep's helpers."""
import pytest
import torch

from common.config import PRESETS
from phase4_scheduler import skinny_gemm as sg
from phase4_scheduler.sweep_gemv_chain import CANDIDATES, shapes, tile_string


def test_parse_tiles_round_trips_and_refuses_nonsense():
    spec = "2048x2048x0=2,2048,4;2560x2048x1=4,1024,8"
    tiles = sg.parse_tiles(spec)
    assert tiles == {(2048, 2048, 0): (2, 2048, 4), (2560, 2048, 1): (4, 1024, 8)}
    assert sg.parse_tiles(tile_string(tiles)) == tiles and sg.parse_tiles("") == {}
    for bad in ("2048x2048=2,2048,4", "2048x2048x0=3,2048,4", "2048x2048x5=2,2048,4", "a=b"):
        with pytest.raises(ValueError, match="TITAN_GEMV_TILES"):
            sg.parse_tiles(bad)


def test_a_pinned_tile_is_the_one_launched_and_gives_the_same_numbers(monkeypatch):
    n, k = 24, 64
    w, x = torch.randn(n, k), torch.randn(1, k)
    launched = []
    real = sg.skinny_gemv_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*a, **kw):
                launched.append((kw["BLOCK_N"], kw["BLOCK_K"], kw["num_warps"]))
                return real[grid](*a, **kw)
            return launch

    monkeypatch.setattr(sg, "skinny_gemv_kernel", Spy())
    monkeypatch.setitem(sg.PINNED_TILES, (n, k, 0), (2, 16, 2))
    torch.testing.assert_close(sg.linear_small_m(x, w), sg.linear_small_m_ref(x, w), atol=1e-5, rtol=1e-5)
    assert launched == [(2, 16, 2)]


def test_sweep_shapes_and_candidates():
    sh = shapes(PRESETS["tinyllama-1.1b"])
    assert sh == {"qkv": (2560, 2048, 1), "o": (2048, 2048, 0), "gate_up": (11264, 2048, 1), "down": (2048, 5632, 2),
                  "lm_head": (32000, 2048, 0)}
    assert all(bn & (bn - 1) == 0 and bk & (bk - 1) == 0 for bn, bk, _ in CANDIDATES)


def test_sweep_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    from phase4_scheduler.sweep_gemv_chain import main
    with pytest.raises(SystemExit, match="needs CUDA"):
        main(["--random-weights"])
