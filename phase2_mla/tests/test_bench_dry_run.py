"""bench_mla's sections end to end on the CPU (interpreter, fp32, tiny shapes): the one-shot GPU run must not die
on a logic error. Timing is stubbed out, so no figure here means anything; what is checked is that every
configuration passes the correctness gate that precedes timing, and that the summary is assembled."""
import torch

from phase2_mla import bench_mla


def test_bench_sections_dry_run(monkeypatch, capsys):
    monkeypatch.setattr(bench_mla, "DEV", "cpu")
    monkeypatch.setattr(bench_mla, "DTYPE", torch.float32)
    monkeypatch.setattr(bench_mla, "RAGGED_LENS", [1, 70])
    monkeypatch.setattr(bench_mla, "graph_ms", lambda fn, inner=5, iters=15: (fn(), 1.0)[1])
    cfgs = [next(c for c in bench_mla.mla_configs(128) if c["dv_split"] == 2),
            next(c for c in bench_mla.mla_configs(128) if c["swap_ab"])]
    assert {c["dv_split"] for c in cfgs} == {1, 2} and any(c["swap_ab"] for c in cfgs)
    res = {"errors": {}, "mla_dsv3": bench_mla.sweep_mla(2, 16, 64, cfgs, "dry")}
    assert all(r.get("correct") for r in res["mla_dsv3"]["rows"]), res["mla_dsv3"]["rows"]
    res["mla_dsv3_splits"] = bench_mla.split_sweep(res["mla_dsv3"]["best"], 2, 16, 64, "dry splits")
    assert [r["num_splits"] for r in res["mla_dsv3_splits"]["rows"]] == [2, 4]
    assert all(r.get("correct") for r in res["mla_dsv3_splits"]["rows"])
    res["gqa_dsv3"] = bench_mla.gqa_decode(2, 16, 2, 64, 64)
    assert res["gqa_dsv3"]["paged"] and res["gqa_dsv3"]["best"]["max_abs_err"] < 2e-2
    res["summary"] = bench_mla.summarize(res, 1.0, 0.0)
    bench_mla.print_summary(res)
    s = res["summary"]
    assert s["mla_over_gqa_time"] == s["mla_dsv3_best"]["ms"] / s["gqa_dsv3_ms"] and s["mla_tp8_best"] is None
    assert "mla_tb_s=" in capsys.readouterr().out


def test_interleaved_ms_times_every_fn_once_a_round_in_turn(monkeypatch):
    """ab_seesaw's and peer_flashmla's rounds: fn 1, 2, ..., then again; each fn's times in round order."""
    from phase2_mla import bench_mla
    calls = []

    def fake_graph_ms(fn, inner=20, iters=15):
        calls.append(fn())
        return float(len(calls))

    monkeypatch.setattr(bench_mla, "graph_ms", fake_graph_ms)
    got = bench_mla.interleaved_ms({"a": lambda: "a", "b": lambda: "b"}, rounds=3)
    assert calls == ["a", "b"] * 3
    assert got == {"a": [1.0, 3.0, 5.0], "b": [2.0, 4.0, 6.0]}
