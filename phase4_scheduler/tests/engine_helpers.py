"""Shared drivers for the engine tests: random prompts, and a workload where requests arrive and are aborted while
the engine steps."""
from __future__ import annotations

import random

from common.sampling import SamplingParams


def prompts(n: int, seed: int = 0, lo: int = 3, hi: int = 40) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 49152) for _ in range(rng.randrange(lo, hi))] for _ in range(n)]


def drive_with_arrivals_and_aborts(eng, ps, rng: random.Random, p_add: float, p_abort: float, max_new: int,
                                   sampling: dict, max_steps: int, on_abort=None, on_output=None):
    """Step `eng` while prompts `ps` arrive (each step with probability p_add; max_tokens drawn in 1..max_new-1,
    `sampling` the other SamplingParams fields, `seed` = the request's index when sampling asks for one) and live
    requests are aborted (probability p_abort per step). Returns (finished outputs by id, max_tokens asked by id,
    number of requests added)."""
    kw = dict(sampling)
    seeded = kw.pop("seed", False)
    live, n, done, asked = [], 0, {}, {}
    for _ in range(max_steps):
        if n < len(ps) and rng.random() < p_add:
            rid = f"q{n}"
            asked[rid] = rng.randrange(1, max_new)
            seed = {"seed": n} if seeded else {}
            eng.add_request(rid, ps[n], SamplingParams(max_tokens=asked[rid], ignore_eos=True, **kw, **seed))
            live.append(rid)
            n += 1
        if live and rng.random() < p_abort:
            out = eng.abort_request(live.pop(rng.randrange(len(live))))
            if on_abort is not None:
                on_abort(out)
        for o in eng.step():
            if on_output is not None:
                on_output(o)
            if o.finished:
                done[o.request_id] = o
        if n == len(ps) and not eng.has_unfinished():
            break
    return done, asked, n
