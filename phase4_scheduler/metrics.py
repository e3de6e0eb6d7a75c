"""Prometheus metrics for the server, written out in the text exposition format (version 0.0.4) by hand.

    metrics = ServerMetrics()
    metrics.ttft.observe(0.031)
    text = metrics.render(engine.stats())      # what GET /metrics returns

NOTE: the format is small enough to write directly (HELP/TYPE lines, `name{labels} value`, histograms as
cumulative `_bucket{le=...}` counters plus `_sum` and `_count`), so the server needs no client library. Gauges
that describe the engine (running / waiting requests, KV-cache usage) are not stored here: they are read from
`engine.stats()` at scrape time, so they can never drift from the scheduler's own view.
"""
from __future__ import annotations

import bisect
import math
import re
import threading
import time

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "titan:"

# Latency buckets in seconds: from sub-millisecond decode steps on the GPU to minute-long CPU requests.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   7.5, 10.0, 20.0, 40.0, 80.0)


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


def _labels(labels: dict[str, str] | None) -> str:
    if not labels:
        return ""
    esc = {k: str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for k, v in labels.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in esc.items()) + "}"


class Histogram:
    """Cumulative buckets, as Prometheus wants them: `le` is an upper bound, +Inf counts everything."""

    def __init__(self, name: str, help: str, buckets=LATENCY_BUCKETS):
        self.name, self.help, self.buckets = PREFIX + name, help, tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # last slot: above the largest bound
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, value)] += 1
            self.sum += value

    def observe_n(self, value: float, n: int) -> None:
        """`n` observations of the same value in O(1) (the tokens of one step's output share one latency)."""
        if n <= 0:
            return
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, value)] += n
            self.sum += value * n

    @property
    def count(self) -> int:
        return sum(self.counts)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            running = 0
            for bound, c in zip(self.buckets + (math.inf,), self.counts):
                running += c
                lines.append(f'{self.name}_bucket{{le="{_fmt(bound)}"}} {running}')
            lines += [f"{self.name}_sum {_fmt(self.sum)}", f"{self.name}_count {running}"]
        return lines

    def __repr__(self) -> str:
        return f"Histogram({self.name}, count={self.count}, sum={self.sum:.4f})"


class Counter:
    """A monotonically increasing count, optionally split by one label."""

    def __init__(self, name: str, help: str, label: str | None = None):
        self.name, self.help, self.label = PREFIX + name, help, label
        self.values: dict[str | None, float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, label_value: str | None = None) -> None:
        with self._lock:
            self.values[label_value] = self.values.get(label_value, 0.0) + amount

    def get(self, label_value: str | None = None) -> float:
        return self.values.get(label_value, 0.0)

    def render(self) -> list[str]:
        """HELP and TYPE name the samples' own `x_total` (text format 0.0.4, as prometheus_client writes it): a
        TYPE line for `x` would leave the `x_total` samples untyped in Prometheus and its parsers."""
        total = f"{self.name}_total"
        lines = [f"# HELP {total} {self.help}", f"# TYPE {total} counter"]
        with self._lock:
            items = sorted(self.values.items(), key=lambda kv: str(kv[0])) or [(None, 0.0)]
            for lv, v in items:
                if self.label is None or lv is None:
                    lines.append(f"{total} {_fmt(v)}")
                else:
                    lines.append(f"{total}{_labels({self.label: lv})} {_fmt(v)}")
        return lines


def gauge(name: str, help: str, value: float, labels: dict[str, str] | None = None) -> list[str]:
    n = PREFIX + name
    return [f"# HELP {n} {help}", f"# TYPE {n} gauge", f"{n}{_labels(labels)} {_fmt(float(value))}"]


class ServerMetrics:
    """Everything /metrics shows that the server itself observes: latencies and request counts."""

    def __init__(self) -> None:
        self.ttft = Histogram("time_to_first_token_seconds", "Time from request arrival to its first token.")
        self.itl = Histogram("inter_token_latency_seconds", "Time between consecutive output tokens of a request.")
        self.e2e = Histogram("e2e_request_latency_seconds", "Time from request arrival to its last token.")
        self.requests = Counter("request_success", "Finished requests by finish reason (stop, length, abort).",
                                label="finished_reason")
        self.errors = Counter("request_errors", "Requests refused with an error, by HTTP status.", label="status")
        self.prompt_tokens = Counter("prompt_tokens", "Prompt tokens of admitted requests.")
        self.generation_tokens = Counter("generation_tokens", "Generated tokens.")

    def render(self, stats: dict, model_name: str = "") -> str:
        """The exposition text; `stats` is engine.stats()."""
        label = {"model_name": model_name} if model_name else None
        lines: list[str] = []
        lines += gauge("num_requests_running", "Requests in the running batch.", stats.get("num_running", 0), label)
        lines += gauge("num_requests_waiting", "Requests queued for admission.", stats.get("num_waiting", 0), label)
        lines += gauge("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).",
                       stats.get("kv_usage", 0.0), label)
        for key, help in (("num_free_blocks", "Free KV-cache blocks."), ("num_total_blocks", "KV-cache blocks.")):
            if key in stats:
                lines += gauge(key, help, stats[key], label)
        shown = {"num_running", "num_waiting", "kv_usage", "num_free_blocks", "num_total_blocks", "counters"}
        extra = {k: v for k, v in stats.items() if k not in shown}
        extra.update(stats.get("counters") or {})  # engines may nest their counters or list them flat
        for key, v in sorted(extra.items()):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                name = re.sub(r"[^a-zA-Z0-9_]", "_", str(key))
                lines += gauge(f"engine_{name}", f"Engine statistic {key} (from engine.stats()).", v, label)
        for metric in (self.requests, self.errors, self.prompt_tokens, self.generation_tokens,
                       self.ttft, self.itl, self.e2e):
            lines += metric.render()
        return "\n".join(lines) + "\n"


class RequestMetrics:
    """One request's share of ServerMetrics, observed per list of outputs in O(1) (server.py calls `batch` each
    time the engine hands the request a list): the tokens that arrive together share one inter-token latency (a
    first list of k tokens: TTFT, then k - 1 ITLs). `finished` / `failed` tell the server whether to abort."""
    __slots__ = ("m", "t0", "last", "n_seen", "finished", "failed")

    def __init__(self, metrics: ServerMetrics, n_prompt: int):
        self.m, self.t0 = metrics, time.perf_counter()
        self.last, self.n_seen, self.finished, self.failed = self.t0, 0, False, False
        metrics.prompt_tokens.inc(n_prompt)

    def batch(self, batch: list) -> None:
        m, now = self.m, time.perf_counter()
        k = sum(len(out.new_token_ids) for out in batch)
        if k:
            if self.n_seen == 0:
                m.ttft.observe(now - self.t0)
                if k > 1:
                    m.itl.observe_n((now - self.t0) / k, k - 1)
            else:
                m.itl.observe_n((now - self.last) / k, k)
            self.last, self.n_seen = now, self.n_seen + k
            m.generation_tokens.inc(k)
        end = batch[-1]
        if end.finished:
            self.finished = True
            m.e2e.observe(now - self.t0)
            m.requests.inc(label_value=end.finish_reason or "stop")
