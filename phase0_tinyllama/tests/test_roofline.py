import matplotlib

matplotlib.use("Agg")

from common.config import get_preset
from phase0_tinyllama.roofline import Point, decode_step_cost, gemm_cost, plot_roofline


def test_gemm_cost():
    assert gemm_cost(2, 3, 4, 2) == (48.0, 2.0 * (8 + 12 + 6))


def test_decode_step_cost_tinyllama_b1_is_bandwidth_bound():
    cfg = get_preset("tinyllama-1.1b")
    flops, nbytes = decode_step_cost(cfg, batch=1, context=0)
    # 2 FLOPs per matmul weight; bytes = the same weights in bf16 -> intensity of exactly 1 FLOP/byte
    assert flops == nbytes
    assert 2.0e9 < nbytes < 2.2e9  # ~1.03 B matmul weights (the untied embedding table is only gathered)
    f64, b64 = decode_step_cost(cfg, batch=64, context=256)
    assert f64 / b64 > 40 * flops / nbytes  # batching raises the intensity


def test_plot_roofline_draws_devices_and_points():
    ax = plot_roofline([Point("gemm", 2e12, 1e9, ms=5.0), Point("decode", 2e9, 2e9)])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("H100 datasheet" in x for x in labels) and any("RTX 4090" in x for x in labels)
    assert any("gemm: 400.0 TFLOP/s" in x for x in labels)
