"""phase2_mla.plots draws what the results files hold (no typed-in numbers): the values it returns are the JSON's."""
import matplotlib.pyplot as plt
import pytest

from common.bench import load_result
from phase2_mla import plots


def _draw(stem: str, draw):
    """The record `stem` and what `draw` drew from it (skipped where the record is absent)."""
    r = load_result("phase2_mla", stem)
    if r is None:
        pytest.skip(f"results/{stem}.json not recorded")
    drawn = draw(r)
    plt.close("all")
    return r, drawn


def test_power_cap_figure_draws_the_contention_record():
    r, drawn = _draw(plots.CONTENTION, plots.power_cap)
    c128 = sorted((c for c in r["cases"] if c["heads"] == 128 and c["schedule"] == "seesaw"), key=lambda c: c["programs"])
    assert drawn["us_per_tile_128"] == ([c["programs"] for c in c128], [c["us_per_tile"] for c in c128])
    assert drawn["sm_clocks_per_tile_128"][1] == [c["us_per_tile"] * c["sm_clock_mhz"] for c in c128]
    assert drawn["sm_clock_mhz_128"][1][-1] < drawn["sm_clock_mhz_128"][1][0]  # the record's point: the clock falls


def test_schedules_figure_draws_each_configurations_best():
    r, drawn = _draw("bench_mla", plots.schedules)
    assert max(drawn.values()) == pytest.approx(max(x["tb_s"] for x in r["mla_dsv3"]["rows"]
                                                    if x.get("correct") and x.get("num_splits", 1) in (1, None)))
    assert list(drawn.values()) == sorted(drawn.values(), reverse=True)


def test_peer_figure_draws_both_kernels_of_each_case():
    r, drawn = _draw(plots.PEER, plots.peer)
    want = {f"{c['heads']} heads, B={c['batch']}": tuple(x["tb_s"] for x in c["rows"]) for c in r["cases"]}
    assert drawn == want  # rows are (ours, FlashMLA) in the record


def test_main_writes_every_png(tmp_path):
    assert plots.main(["--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"mla_power_cap.png", "mla_schedules.png", "mla_peer.png"}
