"""GPU time per kind of step (decode graph, mixed-step graph, eager), from CUDA events: no host sync on a step's path.

bench_equal_latency turns it on (TITAN_STEP_TIMING=1) to split a serving point's time between its decode-only and
its mixed steps; ModelRunner.step_shapes() reports the running totals. Each step records an event before and after
its work on the current stream; pairs are summed once their end has run (`query`, non-blocking), and `totals()`
waits for the rest. The span is stream time from the step's first to its last GPU operation, gaps included
(e.g. a piecewise mixed step waiting for the host between its graphs), not the host's time. A step is timed only
where the runner launched it; on the CPU there is nothing to time (the timer is off)."""
from __future__ import annotations

import os
from collections import deque

import torch

ENV = "TITAN_STEP_TIMING"


def step_timing_enabled(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get(ENV, "0") not in ("0", "", "off")


class StepTimer:
    def __init__(self):
        self.pending: deque = deque()  # (kind, start event, end event) not yet summed
        self.ms: dict[str, float] = {}
        self.steps: dict[str, int] = {}

    @staticmethod
    def begin() -> torch.cuda.Event:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def end(self, kind: str, start: torch.cuda.Event) -> None:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        self.pending.append((kind, start, ev))
        self._drain(block=False)

    def _drain(self, block: bool) -> None:
        while self.pending and (block or self.pending[0][2].query()):
            kind, start, end = self.pending.popleft()
            end.synchronize()
            self.ms[kind] = self.ms.get(kind, 0.0) + start.elapsed_time(end)
            self.steps[kind] = self.steps.get(kind, 0) + 1

    def totals(self) -> dict[str, float]:
        """{"<kind>_gpu_ms": summed GPU milliseconds, "<kind>_timed_steps": count} for every kind timed so far."""
        self._drain(block=True)
        out = {}
        for kind, ms in self.ms.items():
            out[f"{kind}_gpu_ms"] = ms
            out[f"{kind}_timed_steps"] = self.steps[kind]
        return out
