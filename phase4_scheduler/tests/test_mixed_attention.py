"""bench_mixed_attention: a serving step's attention through the one packed prefill launch equals the split (decodes
through the decode kernel, prompts through the prefill kernel) on the same inputs; cases parse or are refused."""
import pytest
import torch

from phase4_scheduler import bench_mixed_attention as bma

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def test_cases_parse_and_bad_ones_are_refused():
    assert bma.parse_case("448x260+2x109") == (448, 260, 2, 109) and bma.parse_case("8x9+0x0") == (8, 9, 0, 0)
    for bad in ("448x260", "0x5+1x3", "4x5+1x0", "4x5+-1x3"):
        with pytest.raises(ValueError):
            bma.parse_case(bad)
    with pytest.raises(SystemExit):
        bma.main(["--cases", "12"])


@pytest.mark.parametrize("case", [(6, 37, 2, 13), (5, 16, 0, 0), (1, 3, 1, 40)])
def test_packed_step_equals_the_split(case):
    """Decodes at a block boundary and off it, prompts longer than a tile: the same outputs from both paths, and
    the packed path's cache writes are the split's (it runs second on the same caches: they must be unchanged)."""
    s = bma.build(*case, layers=1, dev=DEV)
    a = bma.packed(s, 0)
    kc0, vc0 = (c.clone() for c in s["caches"][0])
    b = bma.split(s, 0)
    assert a.shape == b.shape == s["q"].shape
    torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)
    assert torch.equal(kc0, s["caches"][0][0]) and torch.equal(vc0, s["caches"][0][1])


@pytest.mark.gpu
def test_gpu_bench_case_runs():
    r = bma.run_case("32x100+1x50", layers=2)
    assert r["max_abs_diff"] < 5e-2 and r["packed_us"] > 0 and r["split_us"] > 0 and r["tokens"] == 82
