"""Host overhead of LLMEngine.step: decode-only steps over B requests with the model forward stubbed out.

    python -m phase4_scheduler.bench_step_overhead                      # B = 64, 256, 1024; vocab 32000; no tokenizer
    python -m phase4_scheduler.bench_step_overhead --tokenizer          # + SmolLM2's tokenizer (detokenising)
    python -m phase4_scheduler.bench_step_overhead --label before --name step_overhead_cpu_before

At 100k output tokens/s with 1024 sequences a decode step has ~10 ms in all, GPU forward included, so whatever
Python does around the forward (scheduling, block tables, slot mapping, tensors, sampling, bookkeeping, outputs)
must stay at a few ms. This script builds a real engine on a 1-layer random Llama, replaces `runner.execute` by a
stub returning fixed random logits [B, V] (no model is computed), runs the requests into steady decode, then times
steps and splits each into parts by wrapping the engine's collaborators:

    schedule   Scheduler.schedule (block allocation included)
    inputs     from the end of schedule to the call of runner.execute (token ids, positions, block tables, slots)
    to_tensor  the stub runner making CPU tensors of what it got (what the real runner does before its H2D copies)
    sampler    the Sampler call (on CPU this includes the argmax over [B, V]: device work on a GPU, host here)
    detok      IncrementalDetokenizer.add_token / delta (only with --tokenizer)
    outputs    building the RequestOutputs
    update     the rest after the forward (per-request bookkeeping, stop checks)

`step` uses the full [B, V] logits, so on this CPU it includes the sampler's argmax over B x V floats (and, in
older code, copies of the logits): compute a GPU does on the device. `host` repeats the steps with the stub's
logits cut to 64 columns, which removes that compute and leaves the Python cost to compare; `argmax` is the full
argmax alone. `final_only` times `step(final_only=True)`, LLM.generate's mode (no per-token RequestOutputs).

NOTE: the wrappers cost ~1 us per call, which the per-part times include; `step` is measured without wrappers in
a separate pass and is the number to quote. Times are minima over the steps (a shared 2-core VM only adds noise),
with torch on one thread; parts are means, so they add up to the mean wrapped step.
"""
from __future__ import annotations

import argparse
import gc
import inspect
import statistics
import time

import torch

from common.bench import load_result, write_result
from common.config import ModelConfig
from common.llama import LlamaForCausalLM
from common.model_loader import LoadedModel
from common.sampling import SamplingParams
from common.weights import random_state_dict
from phase4_scheduler.detokenizer import IncrementalDetokenizer
from phase4_scheduler.engine import LLMEngine

try:
    from phase4_scheduler.engine import freeze_heap
except ImportError:  # older engines (the before/after comparison runs this script on the old code)
    def freeze_heap() -> None:
        gc.collect()
        gc.freeze()

HOST_VOCAB = 64  # the host-only pass slices the logits to this many columns
PARTS = ["schedule", "inputs", "to_tensor", "sampler", "detok", "outputs", "update"]


def tiny_loaded(vocab: int, tokenizer=None) -> LoadedModel:
    """A 1-layer random Llama with the given vocabulary (its forward is never run: the runner is stubbed)."""
    cfg = ModelConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM.from_state_dict(cfg, random_state_dict(cfg, seed=0))
    return LoadedModel(cfg, model, tokenizer, "stub", torch.device("cpu"), torch.float32)


def _as_tensor(x, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype) if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=dtype)


class StubForward:
    """Stands in for ModelRunner.execute: turns its inputs into CPU tensors as a runner must before the host->device
    copy (lists are converted, block-table rows padded; tensors pass through), then returns rows of a fixed random
    [B_max, V] logits tensor instead of computing a model."""

    def __init__(self, max_batch: int, vocab: int):
        self.logits = torch.randn(max_batch, vocab, generator=torch.Generator().manual_seed(0))  # [B_max, V]
        self.calls, self.convert_s = 0, 0.0

    def __call__(self, token_ids, positions, q_lens, seq_lens, block_tables, slot_mapping, token_src=None):
        t = time.perf_counter()
        for x, dt in ((token_ids, torch.long), (positions, torch.long), (q_lens, torch.int32),
                      (seq_lens, torch.int32), (slot_mapping, torch.long)):
            _as_tensor(x, dt)
        if token_src is not None:  # overlapped decode: the previous step's tokens into the ids (device work on a GPU)
            if len(token_src) == 3:
                _as_tensor(token_ids, torch.long)[token_src[2]] = token_src[0][token_src[1]]
            else:
                token_src[0][token_src[1]]
        if not isinstance(block_tables, torch.Tensor):
            w = max(map(len, block_tables))
            block_tables = torch.tensor([list(r) + [0] * (w - len(r)) for r in block_tables], dtype=torch.int32)
        self.calls += 1
        self.convert_s += time.perf_counter() - t
        return self.logits[:len(q_lens)]  # [B, V]


class PartTimer:
    """Wraps the engine's collaborators to split each step into PARTS (seconds per step, summed over calls)."""

    def __init__(self, engine: LLMEngine):
        self.acc = dict.fromkeys(PARTS, 0.0)
        self.marks: dict[str, float] = {}
        self.engine = engine
        sched, runner = engine.scheduler, engine.runner
        orig_schedule, orig_execute, orig_sampler = sched.schedule, runner.execute, engine.sampler
        orig_output = engine._output

        def schedule():
            t = time.perf_counter()
            out = orig_schedule()
            self.marks["sched_end"] = time.perf_counter()
            self.acc["schedule"] += self.marks["sched_end"] - t
            return out

        def execute(*a, **k):
            self.acc["inputs"] += time.perf_counter() - self.marks["sched_end"]
            before = orig_execute.convert_s
            out = orig_execute(*a, **k)
            self.acc["to_tensor"] += orig_execute.convert_s - before
            return out

        def sampler(*a, **k):
            t = time.perf_counter()
            out = orig_sampler(*a, **k)
            self.acc["sampler"] += time.perf_counter() - t
            return out

        def output(*a, **k):
            t = time.perf_counter()
            out = orig_output(*a, **k)
            self.acc["outputs"] += time.perf_counter() - t
            return out

        sched.schedule, runner.execute, engine.sampler, engine._output = schedule, execute, sampler, output
        self._restore = lambda: (delattr(sched, "schedule"), setattr(runner, "execute", orig_execute),
                                 setattr(engine, "sampler", orig_sampler), delattr(engine, "_output"))
        self._det = {name: getattr(IncrementalDetokenizer, name) for name in ("add_token", "delta")}
        for name, fn in self._det.items():
            setattr(IncrementalDetokenizer, name, self._timed_det(fn))

    def _timed_det(self, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            self.acc["detok"] += time.perf_counter() - t
            return out
        return wrapper

    def step(self) -> float:
        t = time.perf_counter()
        self.engine.step()
        return time.perf_counter() - t

    def close(self) -> None:
        self._restore()
        for name, fn in self._det.items():
            setattr(IncrementalDetokenizer, name, fn)


def decode_engine(batch: int, vocab: int, tokenizer, prompt_len: int, steps: int,
                  seats: int | None = None, **engine_kw) -> LLMEngine:
    """An engine with `batch` requests, prefilled (one step) and decoding, its forward stubbed; `seats` (default
    `batch`) seats and KV blocks for that many requests of this size (room for later arrivals); `engine_kw` to
    LLMEngine (e.g. overlap=True: the stub takes the runner's token_src)."""
    seats = seats or batch
    loaded = tiny_loaded(vocab, tokenizer)
    blocks = seats * (-(-(prompt_len + 6 * steps + 40) // 16))
    eng = LLMEngine(loaded, max_num_seqs=seats, max_num_batched_tokens=batch * prompt_len, num_blocks=blocks,
                    block_size=16, **engine_kw)
    eng.runner.execute = StubForward(seats, vocab)
    g = torch.Generator().manual_seed(1)
    params = SamplingParams(max_tokens=6 * steps + 30, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        eng.add_request(f"r{i}", torch.randint(3, vocab, (prompt_len,), generator=g).tolist(), params)
    eng.step()  # the whole batch's prefill in one step
    assert all(r.num_computed_tokens == r.num_tokens - 1 for r in eng.requests.values()), "not all in decode"
    return eng


def time_steps(eng: LLMEngine, steps: int, final_only: bool) -> list[float]:
    """Seconds of each of `steps` plain engine steps ([] for final_only on an engine without that mode)."""
    if final_only and "final_only" not in inspect.signature(eng.step).parameters:
        return []
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        eng.step(final_only=True) if final_only else eng.step()
        out.append(time.perf_counter() - t)
    return out


def measure(batch: int, vocab: int, tokenizer, prompt_len: int = 128, steps: int = 20, warmup: int = 3,
            gc_freeze: bool = False) -> dict:
    eng = decode_engine(batch, vocab, tokenizer, prompt_len, steps)
    for _ in range(warmup):
        eng.step()
    if gc_freeze:
        freeze_heap()
    totals, finals = time_steps(eng, steps, False), time_steps(eng, steps, True)  # plain steps: nothing wrapped
    logits = eng.runner.execute.logits[:batch]
    argmax = []
    for _ in range(steps):  # the sampler's argmax over [B, V]: device work on a GPU, counted apart here
        t = time.perf_counter()
        logits.argmax(-1)
        argmax.append(time.perf_counter() - t)
    full = eng.runner.execute.logits
    eng.runner.execute.logits = full[:, :HOST_VOCAB].contiguous()  # host-only pass: an argmax over 64 columns
    hosts, host_finals = time_steps(eng, steps, False), time_steps(eng, steps, True)
    eng.runner.execute.logits = full
    timer = PartTimer(eng)
    try:
        wrapped = [timer.step() for _ in range(steps)]
    finally:
        timer.close()
    parts = {k: v / steps * 1e3 for k, v in timer.acc.items()}
    parts["update"] = max(0.0, statistics.mean(wrapped) * 1e3 - sum(parts.values()))  # means: they add up
    assert all(r.num_computed_tokens == r.num_tokens - 1 for r in eng.requests.values())
    del eng, timer
    gc.unfreeze()  # let this engine go before the next one
    ms = lambda ts: min(ts) * 1e3  # minima: this small VM's noise only adds time  # noqa: E731
    row = {"batch": batch, "vocab": vocab, "tokenizer": tokenizer is not None, "steps": steps,
           "step_ms_min": ms(totals), "step_ms_median": statistics.median(totals) * 1e3,
           "step_ms_max": max(totals) * 1e3, "argmax_ms": ms(argmax), "gc_freeze": gc_freeze,
           "host_ms": ms(hosts), "host_ms_median": statistics.median(hosts) * 1e3,
           "us_per_request": ms(hosts) * 1e3 / batch, "parts_ms": parts}
    if finals:
        row["final_only_step_ms"] = ms(finals)
        row["final_only_host_ms"] = ms(host_finals)
    return row


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier timings)")
    ap.add_argument("--tokenizer", action="store_true", help="also measure with SmolLM2's tokenizer (detokenising)")
    ap.add_argument("--gc-freeze", action="store_true", help="engine.freeze_heap() before timing (no full-GC stalls)")
    ap.add_argument("--label", default="after", help="what code this measures (before/after a change)")
    ap.add_argument("--name", default="step_overhead_cpu")
    ap.add_argument("--compare", default="step_overhead_cpu_before", help="a results JSON to print a ratio against")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)  # the engine's host work is one thread; argmax is timed apart
    configs = [(b, args.vocab, None) for b in args.batch]
    if args.tokenizer:
        from common.model_loader import resolve_weights
        tok = resolve_weights("smollm2-135m", random_weights=True)[2]
        if tok is None:
            raise SystemExit("--tokenizer needs the SmolLM2 GGUF (make setup)")
        configs += [(b, tok.vocab_size, tok) for b in args.batch]
    rows = []
    for b, v, tok in configs:
        row = measure(b, v, tok, steps=args.steps, gc_freeze=args.gc_freeze)
        rows.append(row)
        p = row["parts_ms"]
        fin = f" final-only host {row['final_only_host_ms']:6.2f}" if "final_only_host_ms" in row else ""
        print(f"B={b:5d} vocab={v} tok={row['tokenizer']!s:5}: step {row['step_ms_min']:7.2f} ms (argmax "
              f"{row['argmax_ms']:5.2f}) host {row['host_ms']:6.2f}{fin} (max step {row['step_ms_max']:.0f}) | "
              + " ".join(f"{k} {p[k]:.2f}" for k in PARTS))
    payload = {"label": args.label, "threads": torch.get_num_threads(), "gc_freeze": args.gc_freeze, "rows": rows}
    before = load_result("phase4_scheduler", args.compare) if args.compare != args.name else None
    if before is not None:
        payload["before"] = {"label": before.get("label"), "rows": before["rows"],
                             "commit": before.get("provenance", {}).get("git_commit")}
        old = {(r["batch"], r["vocab"], r["tokenizer"]): r for r in before["rows"]}
        for r in rows:
            o = old.get((r["batch"], r["vocab"], r["tokenizer"]))
            if o is None:
                continue
            o_host = o["host_ms"]
            r["host_speedup_vs_before"] = o_host / r["host_ms"]
            fin = (f", final-only {o_host / r['final_only_host_ms']:.1f}x ({r['final_only_host_ms']:.2f} ms)"
                   if "final_only_host_ms" in r else "")
            print(f"B={r['batch']:5d} tok={r['tokenizer']!s:5}: host {o_host:7.2f} -> {r['host_ms']:6.2f} ms "
                  f"({r['host_speedup_vs_before']:.1f}x){fin}")
    write_result("phase4_scheduler", args.name, payload)
    return payload


if __name__ == "__main__":
    main()
