"""bench_equal_latency: the interpolation at a latency target (synthetic curves), saturation detection (a fake
engine on a fake clock: a queue of known capacity), the padded static scheduler, and the JSON of a CPU smoke run.
No timed assertions: the fake clock makes the queueing exact, and the real run is checked for structure only."""
import json
from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest

from common.sampling import SamplingParams
from phase4_scheduler import bench_equal_latency as bel
from phase4_scheduler.outputs import RequestOutput
from phase4_scheduler.static_batching import static_engine
from phase4_scheduler.static_padded import PaddedStaticScheduler, padded_static_engine


def curve(rates, p50, saturated=(), tok_per_req=300.0):
    return [{"rate": r, "e2e_p50": l, "output_tok_s": r * tok_per_req, "saturated": r in saturated}
            for r, l in zip(rates, p50)]


# -- the max rate at a p50 target -----------------------------------------------------------------------------------
def test_interpolation_is_exact_on_a_linear_curve_and_order_free():
    a, b = 0.2, 0.01  # p50 = a + b * rate
    rates = [40, 10, 30, 20]  # unsorted on purpose
    pts = curve(rates, [a + b * r for r in rates])
    for target in (0.33, 0.41, 0.47):
        got = bel.max_rate_at_latency(pts, target)
        assert got["limited_by"] == "latency"
        assert got["rate"] == pytest.approx((target - a) / b)
        assert got["output_tok_s"] == pytest.approx(got["rate"] * 300.0)


def test_interpolation_brackets_a_convex_curve():
    cap = 100.0
    rates = np.linspace(10, 90, 9)
    pts = curve(rates, [1.0 / (cap - r) for r in rates])  # M/M/1-like: p50 blows up near capacity
    target = 0.05  # true answer: rate 80
    got = bel.max_rate_at_latency(pts, target)
    assert 70 <= got["rate"] <= 80 + 1e-9  # chords of a convex curve lie above it: never overestimates
    assert got["rate"] == pytest.approx(80.0)  # 80 is a swept point here


@pytest.mark.parametrize("target, limited_by, rate, upper", [
    (0.1, "target_below_sweep", None, 10),
    (10.0, "saturation", 20, 30),  # the target is never hit; saturation at 30 stops the walk
])
def test_limits_of_the_walk(target, limited_by, rate, upper):
    pts = curve([10, 20, 30, 40], [0.5, 0.6, 5.0, 9.0], saturated={30, 40})
    got = bel.max_rate_at_latency(pts, target)
    assert (got["limited_by"], got["rate"], got["rate_upper"]) == (limited_by, rate, upper)


def test_a_sawtooth_curve_takes_the_highest_rate_that_meets_the_target():
    """Static batching's p50 is not monotone in the rate (H100, equal_latency_wide512_s1206_h100: 2.68 s at 64
    req/s, 1.71 at 128, 2.60 at 160, 2.33 at 192): the answer is the highest stable rate meeting the target, not
    the first crossing."""
    pts = curve([64, 96, 128, 160, 192, 224], [2.68, 2.37, 1.71, 2.60, 2.33, 2.68], saturated={224})
    got = bel.max_rate_at_latency(pts, 2.334)
    assert (got["limited_by"], got["rate"], got["rate_upper"]) == ("saturation", 192, 224)
    got = bel.max_rate_at_latency(pts, 1.75)  # 128 meets it, 160 does not: interpolated between them
    assert got["limited_by"] == "latency" and got["rate"] == pytest.approx(128 + 32 * (1.75 - 1.71) / (2.60 - 1.71))
    got = bel.max_rate_at_latency(pts, 1.5)
    assert (got["limited_by"], got["rate"], got["rate_upper"]) == ("target_below_sweep", None, 64)
    got = bel.max_rate_at_latency(curve([10, 20], [9.0, 9.0], saturated={10, 20}), 1.0)
    assert (got["limited_by"], got["rate"], got["rate_upper"]) == ("saturation", None, 10)


def test_sweep_end_is_a_lower_bound_and_bad_targets_are_refused():
    got = bel.max_rate_at_latency(curve([10, 20], [0.5, 0.6]), 1.0)
    assert got["limited_by"] == "sweep_end" and got["rate"] == 20 and got["rate_upper"] is None
    with pytest.raises(ValueError, match="> 0"):
        bel.max_rate_at_latency(curve([10], [0.5]), 0.0)
    with pytest.raises(ValueError, match="no swept points"):
        bel.max_rate_at_latency([], 1.0)


def test_comparison_ratio_and_bracket():
    cont = curve([10, 20, 40, 80], [0.5, 0.5, 0.6, 0.7])  # never saturates: a lower bound
    static = curve([10, 20, 40], [0.8, 1.2, 9.0], saturated={40})
    rows = bel.comparisons({"continuous": cont, "static": static}, targets=[1.0])
    best = next(r for r in rows if r["target"] != "given")
    assert best["target_p50_s"] == 1.2  # the p50 of static at its best stable point (rate 20)
    assert best["ratio"] == pytest.approx(80 / 20)
    assert best["ratio_low"] == pytest.approx(80 / 40) and best["ratio_high"] is None
    assert best["ratio_low"] <= best["ratio"]
    # a saturated point's measured rate can fall below the last stable point's: the bracket uses what it offered
    meas = [dict(p, offered_tok_s=p["output_tok_s"]) for p in static]
    meas[-1]["output_tok_s"] = 0.5 * meas[1]["output_tok_s"]
    row = bel.compare_at(cont, meas, 1.2)
    assert row["static"]["output_tok_s_upper"] == 40 * 300.0 and row["ratio_low"] <= row["ratio"]
    given = next(r for r in rows if r["target"] == "given")
    s_rate = 10 + (1.0 - 0.8) / (1.2 - 0.8) * 10  # interpolated inside static's stable range
    assert given["static"]["rate"] == pytest.approx(s_rate) and given["ratio"] == pytest.approx(80 / s_rate)


# -- saturation: a fake engine with known capacity on a fake clock ------------------------------------------------
class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, dt):
        self.t += dt


class FakeEngine:
    """`seats` requests decode together, one token each per `dt` seconds, FCFS: capacity seats / (out * dt)."""

    def __init__(self, clock, seats=4, dt=0.01):
        self.clock, self.seats, self.dt = clock, seats, dt
        self.requests, self.queue, self.running = {}, deque(), []
        self.scheduler = SimpleNamespace(num_preemptions=0, waiting=self.queue)

    def validate(self, ids, params):
        if not ids:
            raise ValueError("empty prompt")

    def add_request(self, rid, ids, params, validated=False):
        r = SimpleNamespace(rid=rid, ids=ids, want=params.max_tokens, out=[], first=None)
        self.requests[rid] = r
        self.queue.append(r)

    def has_unfinished(self):
        return bool(self.requests)

    def abort_request(self, rid):
        r = self.requests.pop(rid)
        if r in self.running:
            self.running.remove(r)
        elif r in self.queue:
            self.queue.remove(r)

    def step(self, final_only=False):
        while self.queue and len(self.running) < self.seats:
            self.running.append(self.queue.popleft())
        self.clock.t += self.dt
        outs = []
        for r in list(self.running):
            r.out.append(0)
            r.first = r.first if r.first is not None else self.clock.t
            if len(r.out) == r.want:
                self.running.remove(r)
                del self.requests[r.rid]
                outs.append(RequestOutput(r.rid, r.ids, [0], list(r.out), finished=True, first_token_time=r.first))
        return outs


def run_fake(rate, n=200, seats=4, dt=0.01, out_len=10, max_seconds=1e9):
    clock = FakeClock()
    lens, arrivals, prompts = bel.make_point_workload([(5, out_len)], rate, n / rate, n, n, vocab=1000)
    sim = bel.simulate(FakeEngine(clock, seats, dt), lens, arrivals, prompts, "t", max_seconds, clock=clock,
                       sleep=clock.sleep)
    return bel.summarize_point(rate, sim, max_slope=0.15)


def test_saturation_is_detected_past_capacity_only():
    cap = 4 / (10 * 0.01)  # 40 req/s
    low, high = run_fake(0.5 * cap), run_fake(2.0 * cap)
    assert not low["saturated"] and abs(low["queue_growth"]) < 0.05
    assert high["saturated"] and high["queue_growth"] == pytest.approx(2.0 - 1, abs=0.25)  # rate/capacity - 1
    assert high["left_behind"] == 1.0 and low["left_behind"] < 0.5  # full seats at admission vs a drained queue
    assert high["e2e_p50"] > 5 * low["e2e_p50"] and low["completed"] == low["requests"] == 200
    assert low["tpot_p50"] == pytest.approx(0.01) and low["output_tok_s"] == pytest.approx(20 * 10, rel=0.1)


def test_a_rising_ttft_alone_is_not_saturation():
    # static batching's TTFT is a sawtooth: a short run can fit a steep slope while every batch drains the queue
    arrival = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert bel.left_behind([(0.5, 3), (2.5, 0), (3.9, 0)], arrival) == 0.0  # events in the second half: t >= 2
    assert bel.left_behind([(0.5, 3), (2.5, 2), (3.9, 0)], arrival) == 0.5
    assert bel.left_behind([(0.5, 3), (9.0, 0)], arrival) == 1.0  # none in the window: the last one before it
    assert bel.left_behind([], arrival) == 0.0
    point = {"timed_out": False, "queue_growth": 0.4, "left_behind": 0.0}
    assert not bel.is_saturated(point, 0.15)
    assert bel.is_saturated({**point, "left_behind": 0.6}, 0.15)
    assert not bel.is_saturated({**point, "left_behind": 1.0, "queue_growth": 0.1}, 0.15)  # a burst, no trend


def test_a_point_over_its_time_limit_is_aborted_and_saturated():
    p = run_fake(200.0, n=100, max_seconds=0.5)
    assert p["timed_out"] and p["saturated"] and p["completed"] < p["requests"]


def test_the_sweep_stops_at_the_first_saturated_rate():
    clock = FakeClock()
    args = SimpleNamespace(rates=[80, 10, 20, 160], duration=5.0, min_requests=50, max_requests=200, seed=0,
                           timeout_factor=4.0, timeout_slack=30.0, saturation_slope=0.15)
    pts = bel.sweep(FakeEngine(clock), "fake", [(5, 10)], args, 1000, progress=lambda s: None, clock=clock,
                    sleep=clock.sleep)
    assert [p["rate"] for p in pts] == [10, 20, 80] and [p["saturated"] for p in pts] == [False, False, True]


def test_bad_rates_scales_and_lengths_files_are_refused(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("[[5, 0]]")
    with pytest.raises(ValueError, match="positive integers"):
        bel.main(["--device", "cpu", "--lengths-file", str(bad)])
    bad.write_text("[[5, 7]]")
    with pytest.raises(ValueError, match="--length-scale"):
        bel.main(["--device", "cpu", "--lengths-file", str(bad), "--length-scale", "2"])
    with pytest.raises(ValueError, match="> 0"):
        bel.make_point_workload([(5, 5)], 0.0, 1.0, 1, 1, vocab=1000)
    with pytest.raises(SystemExit) as exit_:  # a usage error now, from the argument's type, before any work
        bel.main(["--device", "cpu", "--rates", "4", "-1"])
    assert exit_.value.code == 2 and "argument --rates: must be a number > 0 (or inf), got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bel.main(["--device", "cpu", "--kv-cache-dtype", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_kv_cache_dtype_reaches_every_policy(tmp_path, monkeypatch):
    """--kv-cache-dtype fp8 reaches the continuous and both static engines alike (one pool format per run)."""
    from phase4_scheduler import engine as eng

    monkeypatch.setenv("TITAN_RESULTS_DIR", str(tmp_path))
    (tmp_path / "lens.json").write_text(json.dumps([[20, 30]] * 8))
    seen = []

    def spy(self, *a, **kw):
        seen.append(kw.get("kv_cache_dtype"))
        raise RuntimeError("stop after the arguments")

    monkeypatch.setattr(eng.LLMEngine, "__init__", spy)
    out = bel.main(SMOKE + ["--lengths-file", str(tmp_path / "lens.json"), "--kv-cache-dtype", "fp8", "--no-plot",
                            "--name", "el_fp8_args"])
    assert seen == ["fp8"] * 3 and set(out["errors"]) == {"continuous", "static", "static_padded"}
    assert out["workload"]["kv_cache_dtype"] == "fp8"


# -- padded static: HF generate's compute ---------------------------------------------------------------------------
def test_padded_static_keeps_seats_until_the_longest_finishes(tiny_no_tok):
    outs = {}
    for name, make in (("static", static_engine), ("padded", padded_static_engine)):
        eng = make(tiny_no_tok, 4, kv_memory="4MiB")
        for rid, n in (("short", 3), ("long", 9)):
            eng.add_request(rid, [5, 6, 7, 8], SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
        steps = 0
        while eng.has_unfinished():
            outs.update({f"{name}-{o.request_id}": o for o in eng.step(final_only=True)})
            steps += 1
        outs[name] = eng
    assert len(outs["static-short"].output_token_ids) == 3
    assert len(outs["padded-short"].output_token_ids) == 9  # its seat decoded until the long one was done
    assert outs["padded-short"].output_token_ids[:3] == outs["static-short"].output_token_ids  # same real tokens
    sched = outs["padded"].scheduler
    assert isinstance(sched, PaddedStaticScheduler) and sched.num_padded_tokens == 6
    assert sched.pop_real_finish("short") < sched.pop_real_finish("long")
    assert sched.pop_real_finish("short") is None and "padded_tokens=6" in repr(sched)


# -- the CLI end to end on the CPU ------------------------------------------------------------------------------------
SMOKE = ["--device", "cpu", "--model", "smollm2-135m", "--random-weights", "--num-layers", "1", "--threads", "1",
         "--length-scale", "0.02", "--max-num-seqs", "4", "--kv-memory", "4MiB", "--rates", "40", "4000",
         "--duration", "0.1", "--min-requests", "6", "--max-requests", "6"]


def test_cli_smoke_writes_every_point_and_the_comparison(tmp_path, monkeypatch):
    monkeypatch.setenv("TITAN_RESULTS_DIR", str(tmp_path))
    rng = np.random.default_rng(0)  # ShareGPT-like spread (long tail of outputs), no dataset needed
    pairs = [[int(p), int(o)] for p, o in zip(rng.integers(20, 300, 50), rng.lognormal(5.3, 0.8, 50).clip(10, 1500))]
    (tmp_path / "lens.json").write_text(json.dumps(pairs))
    out = bel.main(SMOKE + ["--lengths-file", str(tmp_path / "lens.json"), "--name", "el_smoke",
                            "--target-p50", "1.0"])
    saved = json.loads((tmp_path / "el_smoke.json").read_text())
    assert (tmp_path / "el_smoke.png").exists() and saved["plot"] == "el_smoke.png"
    assert not saved["errors"] and set(saved["policies"]) == set(bel.POLICIES) and "provenance" in saved
    for pol in saved["policies"].values():
        pts = pol["points"]
        assert 1 <= len(pts) <= 2 and all(not p["saturated"] for p in pts[:-1])  # stops at the first saturated
        assert len(pts) == 2 or pts[-1]["saturated"]
        for p in pts:
            assert p["completed"] == p["requests"] == 6 and p["output_tok_s"] > 0
            assert {f"{m}_{q}" for m in ("e2e", "ttft", "tpot") for q in ("p50", "p90", "p99")} <= set(p)
            assert p["ttft_p50"] <= p["e2e_p50"]
            # step shapes: the point's own steps (counter differences), every output token computed in one
            assert p["steps"] >= 1 and p["steps"] * p["tokens_per_step"] >= p["output_tokens"] - p["requests"]
            assert "mixed_graph_padding" not in p  # no graphs on the CPU
    assert "padded_tokens" in saved["policies"]["static_padded"]
    assert {r["baseline"] for r in saved["comparison"]} <= {"static", "static_padded"}
    assert all(r["target"] in ("given",) or r["target"].startswith("p50 of") for r in saved["comparison"])
    assert out["summary"] == saved["summary"]
    for r in saved["comparison"]:
        if r["ratio"] is not None:
            assert r["ratio_low"] <= r["ratio"] <= (r["ratio_high"] or float("inf"))


def test_step_shapes_of_a_point():
    """describe_steps: tokens per step, the overlapped shares and the graphs' padding from counter differences;
    an engine without counters or graphs describes nothing."""
    d = {"num_steps": 10, "num_batched_tokens": 6250, "num_overlapped_steps": 8, "num_overlapped_mixed_steps": 5,
         "decode_graph_steps": 2, "decode_graph_tokens": 900, "decode_graph_padded_tokens": 1024,
         "mixed_graph_steps": 8, "mixed_graph_tokens": 5000, "mixed_graph_padded_tokens": 8192}
    got = bel.describe_steps(d)
    assert got["steps"] == 10 and got["tokens_per_step"] == 625 and got["overlapped_mixed_steps_share"] == 0.5
    assert got["mixed_graph_tokens_per_step"] == 625 and got["mixed_graph_padding"] == pytest.approx(1 - 5000 / 8192)
    assert got["decode_graph_padding"] == pytest.approx(1 - 900 / 1024) and got["overlapped_steps_share"] == 0.8
    assert bel.describe_steps({}) == {} and bel.step_shapes(SimpleNamespace()) == {}


def test_step_gpu_time_per_kind_of_step():
    """With TITAN_STEP_TIMING's totals in the differences: milliseconds per step and each kind's share of GPU time."""
    d = {"decode_graph_gpu_ms": 30.0, "decode_graph_timed_steps": 10, "mixed_graph_gpu_ms": 90.0,
         "mixed_graph_timed_steps": 9}
    got = bel.describe_steps(d)
    assert got["decode_graph_gpu_ms_per_step"] == 3.0 and got["mixed_graph_gpu_ms_per_step"] == 10.0
    assert got["mixed_graph_gpu_share"] == 0.75 and got["decode_graph_timed_steps"] == 10
    assert "eager_gpu_ms_per_step" not in got


def test_refine_narrows_the_saturation_bracket():
    assert bel.refine_rates([{"rate": 10, "saturated": False}, {"rate": 40, "saturated": True}], 2) == [20, 30]
    assert bel.refine_rates([{"rate": 10, "saturated": False}, {"rate": 40, "saturated": False}], 2) == []
    assert bel.refine_rates([{"rate": 40, "saturated": True}], 2) == []
    clock = FakeClock()  # capacity 40 req/s (4 seats x 10 tokens x 10 ms)
    args = SimpleNamespace(rates=[10, 20, 80], duration=5.0, min_requests=50, max_requests=200, seed=0,
                           timeout_factor=4.0, timeout_slack=30.0, saturation_slope=0.15, refine=3)
    pts = bel.sweep(FakeEngine(clock), "fake", [(5, 10)], args, 1000, progress=lambda s: None, clock=clock,
                    sleep=clock.sleep)
    rates = [p["rate"] for p in pts]
    assert rates == sorted(rates) and rates[:3] == [10, 20, 35]  # 35 stable, then 50 saturated: cut there
    assert pts[-1]["saturated"] and not any(p["saturated"] for p in pts[:-1]) and pts[-1]["rate"] == 50


def test_reanalyze_recomputes_the_comparison_and_keeps_the_points(tmp_path):
    pts = {"continuous": curve([64, 128, 192], [0.5, 0.6, 0.9], saturated=set()),
           "static": curve([64, 128, 192, 224], [2.68, 1.71, 2.33, 2.7], saturated={224})}
    rec = {"provenance": {"commit": "abc", "device": "gpu"}, "workload": {"target_p50": [1.75]},
           "policies": {k: {"points": v} for k, v in pts.items()}, "comparison": [{"ratio": None}]}
    f = tmp_path / "run.json"
    f.write_text(json.dumps(rec))
    out = bel.main(["--reanalyze", str(f)])
    saved = json.loads(f.read_text())
    assert saved["provenance"] == {"commit": "abc", "device": "gpu"} and saved["policies"] == rec["policies"]
    best, given = saved["comparison"]
    assert best["target_p50_s"] == 2.33 and best["static"]["rate"] == 192  # the sawtooth's highest meeting rate
    assert given["target_p50_s"] == 1.75 and saved["reanalysis"]["ratios_before"] == [None]
    assert out["reanalysis"]["ratios_after"] == [best["ratio"], given["ratio"]]
    with pytest.raises(SystemExit, match="no such file"):
        bel.main(["--reanalyze", str(tmp_path / "missing.json")])


def test_warm_up_bursts_meet_both_integer_specialisations():
    """Bursts of n, n - 1 and 1 requests, each drained before the next: a sequence count divisible by 16 (512), one
    that is not (511) and 1 -- the three ways Triton specialises an integer argument."""
    assert bel.warm_up_bursts(512) == [512, 511, 1] and bel.warm_up_bursts(2) == [2, 1] and bel.warm_up_bursts(1) == [1]

    class Fake:
        scheduler = None

        def __init__(self):
            self.pending, self.bursts = [], []

        def add_request(self, rid, ids, params):
            assert params.max_tokens <= 4 and all(100 <= t < 900 for t in ids)
            self.pending.append(rid)

        def has_unfinished(self):
            return bool(self.pending)

        def step(self, final_only):
            self.bursts.append(len(self.pending))
            done, self.pending = self.pending, []
            return [type("Out", (), {"request_id": r})() for r in done]

    eng = Fake()
    bel.warm_up(eng, [(5, 3), (7, 9), (2, 2)] * 6, vocab=1000, n=17)
    assert eng.bursts == [17, 16, 1]
