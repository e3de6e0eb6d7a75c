"""Regenerates phase4_scheduler/continuous_batching.ipynb (cells only; execute it with nbconvert afterwards:
`jupyter nbconvert --to notebook --execute --inplace continuous_batching.ipynb` from phase4_scheduler/).

It holds every cell of the notebook: edit the cells here, or edit the notebook and bring this file up to date, so
that running it never drops a section (it once did: sections 3, 5 and 7 had been added to the notebook only)."""
from pathlib import Path

import nbformat as nbf

nb = nbf.v4.new_notebook()
md = nbf.v4.new_markdown_cell
code = nbf.v4.new_code_cell
nb.cells = [
md(r"""# Phase 4 — Continuous batching: squeezing the GPU

A thin notebook over the engine in this folder (`scheduler.py`, `kv_manager.py`, `model_runner.py`,
`engine.py`, `server.py`). It runs on a CPU in about a minute with a 2-layer SmolLM2-shaped model; the GPU
measurements are `gpu_run.sh`'s job."""),
code(r"""%matplotlib inline
import time
import matplotlib.pyplot as plt
import torch
from common.model_loader import load_model
from common.sampling import SamplingParams
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.static_batching import static_engine
torch.manual_seed(0)
loaded = load_model("smollm2-135m", random_weights=True, num_layers=2, device="cpu")"""),
md(r"""## 1. One step of the engine
Every step the scheduler picks `(request, tokens to compute)` pairs under a token budget: running requests decode
one token each, waiting ones prefill (in chunks when the budget runs out). The KV-cache manager gives each
sequence blocks of 16 token slots from phase 1's allocator."""),
code(r"""# NBVAL_CHECK_OUTPUT
engine = LLMEngine(loaded, num_blocks=24, max_num_seqs=4, max_num_batched_tokens=48)
lengths = [(40, 12), (8, 30), (25, 20), (60, 8), (12, 40), (30, 16)]
g = torch.Generator().manual_seed(1)
for i, (p, o) in enumerate(lengths):
    engine.add_request(f"r{i}", torch.randint(100, 40000, (p,), generator=g).tolist(),
                       SamplingParams(max_tokens=o, temperature=0.0, ignore_eos=True))
print(engine.scheduler.schedule())"""),
md(r"""That first plan prefills `r0` whole and starts `r1`, within the 48-token budget. (We asked the scheduler
directly, so let us start over and let the engine drive.)"""),
code(r"""def trace(engine, reqs):
    for rid, ids, sp in reqs:
        engine.add_request(rid, ids, sp)
    rows, prev = [], dict(engine.stats())
    while engine.has_unfinished():
        engine.step()
        s = engine.stats()
        rows.append({"running": s["num_running"], "waiting": s["num_waiting"], "kv": s["kv_usage"],
                     "tokens": s["num_batched_tokens"] - prev["num_batched_tokens"],
                     "preempted": s["num_preemptions"] - prev["num_preemptions"]})
        prev = dict(s)
    return rows

g = torch.Generator().manual_seed(1)
reqs = [(f"r{i}", torch.randint(100, 40000, (p,), generator=g).tolist(),
         SamplingParams(max_tokens=o, temperature=0.0, ignore_eos=True)) for i, (p, o) in enumerate(lengths)]
cont = trace(LLMEngine(loaded, num_blocks=24, max_num_seqs=4, max_num_batched_tokens=48), reqs)
stat = trace(static_engine(loaded, 4, num_blocks=24), reqs)
fig, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True, layout="constrained")
for name, rows in (("continuous", cont), ("static", stat)):
    axes[0].plot([r["running"] for r in rows], label=f"{name}: running sequences")
    axes[1].plot([r["kv"] for r in rows], label=f"{name}: KV blocks in use")
axes[0].legend(); axes[1].legend(); axes[1].set_xlabel("engine step"); axes[1].set_ylabel("fraction")
plt.show()
print(f"continuous: {len(cont)} steps, {sum(r['preempted'] for r in cont)} preemptions; static: {len(stat)} steps")"""),
md(r"""Static batching waits for the longest member of each batch; its seats empty out as members finish. Continuous
batching refills a seat the step after it frees, so the same work takes fewer steps. With only 24 blocks
(384 token slots) the continuous engine may also *preempt*: when a running sequence needs a block and none is
free, the newest request gives its blocks back and is recomputed later — the output tokens are the same (the tests
check it)."""),
md(r"""## 2. The same tokens, however they are batched"""),
code(r"""# NBVAL_CHECK_OUTPUT
from common import artifacts
single = artifacts.get("engine.generate")   # phase 0's one-request engine
from phase4_scheduler.llm import LLM
llm = LLM(engine=LLMEngine(loaded, num_blocks=8, max_num_seqs=3, max_num_batched_tokens=32))  # 128 slots: forces preemption
outs = llm.generate([ids for _, ids, _ in reqs], [sp for _, _, sp in reqs])
same = [o.output_token_ids == single(loaded.model, torch.tensor([ids]), sp)[0].tolist() for o, (_, ids, sp) in zip(outs, reqs)]
print("token-identical to the single-request engine:", same, "| preemptions:", llm.engine.stats()["num_preemptions"])"""),
md(r"""## 3. Overlapped decode: launch step N+1 before step N's tokens reach the host
On the GPU a synchronous step leaves the GPU idle while the host reads the sampled tokens, checks stops, builds
outputs and prepares the next inputs (40% of every B=1 step on the H100, `results/profile_decode_overlap_off_gpu.json`).
With `overlap=True` (the default with CUDA graphs; here `overlap_mixed=False` keeps it to decode-only steps, as it
was first built: the next cell lifts that) a decode step's input ids are gathered on the device from the
previous step's sampled tokens, so the engine launches step N+1 first and only then waits for step N: each
`step()` call returns the *previous* step's outputs, and every request carries a placeholder for its token in
flight. On the CPU nothing runs concurrently, but the bookkeeping is the same, so we can watch it:"""),
code(r"""# NBVAL_CHECK_OUTPUT
from phase4_scheduler.overlap import PLACEHOLDER
eng = LLMEngine(loaded, num_blocks=24, max_num_seqs=4, overlap=True, overlap_mixed=False, detokenize=False)
for i, n in enumerate((3, 5)):
    eng.add_request(f"o{i}", list(range(100 + 10 * i, 110 + 10 * i)), SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
call = 0
while eng.has_unfinished():
    outs = eng.step()
    call += 1
    in_flight = {r.request_id: r.output_token_ids.count(PLACEHOLDER) for r in eng.scheduler.running}
    print(f"call {call}: outputs {[(o.request_id, len(o.output_token_ids)) for o in outs]}, placeholders {in_flight}")
print("overlapped steps:", eng.counters["num_overlapped_steps"], "of", eng.counters["num_steps"])"""),
md(r"""The first call prefills (a synchronous step); the second launches the first decode and returns nothing; from then on
each call returns the step before it. When `o0` finishes, the step already launched for it is wasted (its token is
dropped), and its blocks are freed at once: every later use of them is queued behind that step on the GPU stream.
Whatever the batching, the tokens are the synchronous engine's, sampled requests with a seed included:"""),
code(r"""# NBVAL_CHECK_OUTPUT
sps = [SamplingParams(max_tokens=8, temperature=0.8, seed=s, ignore_eos=True) for s in (1, 2, 3)]
prompts = [list(range(200 + 7 * i, 220 + 7 * i)) for i in range(3)]
runs = [LLM(engine=LLMEngine(loaded, num_blocks=24, max_num_seqs=4, overlap=o)).generate(prompts, sps) for o in (False, True)]
print("same tokens with and without overlap:", [a.output_token_ids == b.output_token_ids for a, b in zip(*runs)])"""),
md(r"""Overlapped decode as above runs ahead only through decode-only steps. When serving, requests arrive all the time, so
nearly every step admits one or carries a prompt chunk, and the engine falls back to synchronous steps: the GPU
waits for the host's part of each step (`bench_mixed_step_host.py` measures it: 0.6–0.9 ms at 448 running requests
with 1–4 arrivals a step on the CPU box). `overlap_mixed` (on by default wherever overlap is, since the H100 measured
it: p50 1.96 → 1.51 s at 320 req/s; `TITAN_OVERLAP_MIXED=0` turns it off) runs ahead through those
steps too: the new prompt tokens are on the host anyway, and only the decode rows need step N's tokens, which are scattered into step N+1's
input ids on the device. It never runs ahead into a step that could preempt (the free blocks must cover every
running request's next allocation) or one whose requests need host-side logits (logprobs, penalties). The price:
a request that finished in step N is only known to have finished after N+1 launched, so its seat frees a step later
(a few more steps below). Two seats, six requests: admissions happen mid-run."""),
code(r"""# NBVAL_CHECK_OUTPUT
from phase4_scheduler.llm import LLM
sp = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
prompts = [list(range(300 + 11 * i, 318 + 11 * i)) for i in range(6)]  # 6 requests, 2 seats: admissions mid-run
outs = {}
for name, kw in {"synchronous": dict(overlap=False), "decode-only overlap": dict(overlap=True, overlap_mixed=False),
                 "mixed overlap": dict(overlap=True, overlap_mixed=True)}.items():
    eng = LLMEngine(loaded, num_blocks=24, max_num_seqs=2, max_num_batched_tokens=24, admit_min_free_seats=1,
                    detokenize=False, **kw)
    outs[name] = [o.output_token_ids for o in LLM(engine=eng).generate(prompts, sp)]
    c = eng.counters
    print(f"{name:20} {c['num_steps']:2} steps, {c['num_overlapped_steps']:2} run ahead "
          f"({c['num_overlapped_mixed_steps']} of them admitting or chunking a prompt)")
print("same tokens:", outs["synchronous"] == outs["decode-only overlap"] == outs["mixed overlap"])
"""),
md(r"""## 4. The OpenAI-compatible server
`titan serve` runs `server.py` (FastAPI + uvicorn) over the `AsyncEngine`. Here it runs in a background thread and
the official `openai` client streams a completion from it."""),
code(r"""import openai
from phase4_scheduler.async_engine import AsyncEngine
from phase4_scheduler.launch import BackgroundServer
from phase4_scheduler.server import create_app
aengine = AsyncEngine.from_model("smollm2-135m", random_weights=True, num_layers=2, device="cpu", max_model_len=256)
with BackgroundServer(create_app(aengine)) as url:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    t0, stamps = time.perf_counter(), []
    for chunk in client.completions.create(model="smollm2-135m", prompt="Once upon a time", max_tokens=24,
                                           temperature=0, stream=True, extra_body={"ignore_eos": True}):
        stamps.append(time.perf_counter() - t0)
    import httpx
    metrics = httpx.get(url + "/metrics").text
print(f"{len(stamps)} chunks; time to first token {stamps[0]*1e3:.0f} ms; mean inter-token {1e3*(stamps[-1]-stamps[0])/max(1,len(stamps)-1):.1f} ms")
print("\n".join(l for l in metrics.splitlines() if l.startswith("titan:num_requests") or l.startswith("titan:kv"))[:600])"""),
md(r"""## 5. Steps with a prefill: CUDA graphs cut at the attentions
A decode-only step replays one captured graph. A step that carries a prefill chunk cannot: its attention depends on
how the packed tokens split into sequences. Everything else in a layer works row by row and depends only on the
token count, so `mixed_graphs.py` captures, per bucket of tokens (16, 32, ..., 256, then four an octave up to the step budget), the fused model as
L + 1 graphs cut at the attentions, and runs the attentions eagerly in between on the real rows. Padding rows only
ever meet row-wise operations, so whatever they hold cannot reach a real row. On the CPU the segments run eagerly
(`capture=False`); the cell checks that a mixed step gives the eager forward's logits with garbage in the padding.
On an H200 this took `titan serve` at 64 req/s of ShareGPT from 12.2 to 1.49 ms per output token (README.md).
"""),
code(r"""# NBVAL_CHECK_OUTPUT
from phase4_scheduler.mixed_graphs import MixedGraphs
from phase4_scheduler.model_runner import BatchAttention
eng = LLMEngine(load_model("smollm2-135m", random_weights=True, num_layers=2, device="cpu", dtype=torch.float32),
                num_blocks=8, max_num_batched_tokens=48, fuse=True)
mixed = MixedGraphs(eng.runner, 48, capture=False)
print("buckets", mixed.buckets, "->", len(mixed.segments[16]), "graphs per bucket (2 layers + 1)")
# one step: a 6-token prompt chunk of request A and a 5-token chunk of request B (its tokens 3..7)
ids, pos = torch.arange(10, 21), torch.tensor([0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7])
cu, lens = torch.tensor([0, 6, 11], dtype=torch.int32), torch.tensor([6, 8], dtype=torch.int32)
tables, slots = torch.tensor([[0], [1]], dtype=torch.int32), torch.tensor([0, 1, 2, 3, 4, 5, 19, 20, 21, 22, 23])
ctx = lambda: BatchAttention(eng.runner, tables, lens, slots, cu, 6)
want = eng.runner.forward(ids, pos, ctx(), cu[1:].long() - 1)
for buf in (mixed.h, mixed.res, mixed.qkv, mixed.attn):
    buf.normal_(0, 1e3)  # garbage in rows 11..15 of the 16-token bucket
got = mixed.run(ids, pos, ctx(), cu[1:].long() - 1)
print("same logits as the eager forward:", torch.allclose(got, want, atol=1e-5))
"""),
md(r"""## 6. A step that carries a prompt
Under Poisson arrivals almost every step admits a request, so the *mixed* step (hundreds of decodes beside a
prompt or a chunk) is the common case, and it is where the engine lost most. Three costs, each visible with
nothing but arithmetic:

1. **CUDA-graph padding.** A graph is captured per token bucket; a step replays the smallest bucket that fits and
   pays for the rest as padding. Powers of two waste up to half a step; four buckets an octave waste < 25%."""),
code(r"""# NBVAL_CHECK_OUTPUT
from phase4_scheduler.mixed_graphs import token_buckets
buckets = token_buckets(8192)
def waste(t, bs):
    return 1 - t / next(b for b in bs if b >= t)
pow2 = [2 ** k for k in range(4, 14)]
ts = range(257, 8193)
print(f"{len(buckets)} buckets: {buckets[:8]} ... {buckets[-3:]}")
print(f"worst padding above 256 tokens: powers of two {max(waste(t, pow2) for t in ts):.0%}, "
      f"four an octave {max(waste(t, buckets) for t in ts):.0%}")
print(f"a typical step at 512 seats (~450 decodes + ~175 prompt tokens = 625): "
      f"replays {next(b for b in pow2 if b >= 625)} (powers of two) or {next(b for b in buckets if b >= 625)}")"""),
md(r"""2. **Empty attention programs.** Phase 3's prefill kernel used a grid of (the longest sequence's query tiles) ×
   (sequences) per KV head, so one long chunk made every decode row launch as many programs as the chunk. The flat
   grid launches one program per query tile actually present (`T // BQ + B`, a binary search finds each tile's
   sequence). With TinyLlama's 8 query heads per KV head a 64-row tile holds BQ = 8 queries:"""),
code(r"""# NBVAL_CHECK_OUTPUT
import math
def programs(q_lens, hkv=4, g=8, block_m=64):
    t, b, bq = sum(q_lens), len(q_lens), block_m // g
    per_seq_grid = math.ceil(max(q_lens) * g / block_m) * b * hkv
    flat_grid = (t // bq + b) * hkv
    useful = sum(math.ceil(n / bq) for n in q_lens) * hkv
    return per_seq_grid, flat_grid, useful
for name, q in [("448 decodes + one 1,024-token chunk", [1] * 448 + [1024]),
                ("448 decodes + two 109-token prompts", [1] * 448 + [109, 109]),
                ("decode only, 448", [1] * 448)]:
    old, new, useful = programs(q)
    print(f"{name:38s} per-sequence grid {old:>7,}  flat grid {new:>5,}  tiles with work {useful:>5,}")"""),
md(r"""3. **Host work between the pieces.** Attention sits between section 5's graph pieces (its launch depended on the
   batch), so a mixed step launched ~90 kernels from Python for 22 layers, and its inputs went to the GPU with `.to("cuda")`
   seven times — each a copy plus a stream synchronisation, so the step first waited for the one in flight. Now
   the inputs go in one pinned, non-blocking copy, and with the flat grid the whole step can be one graph
   (full mixed-step graphs: the engine's default since the H100 measured them on 2026-12-06).

What the H100 said (results/): mixed-step attention per layer (2026-12-05), and the steady-state sweeps at 512
seats with the step timer (2026-12-06), which times each kind of step on the GPU: a step that carries a prompt
costs 1.4–2.4x a decode-only step with the graphs cut at the attentions ("piecewise"), and 20–41% less when the
whole step is one graph ("full"). Wall time per step in the older sweep *fell* as the load rose because fewer of
the steps were mixed."""),
code(r"""import json
from pathlib import Path
res = Path("results")
att = json.loads((res / "mixed_attention_h100.json").read_text())
for r in att["rows"]:
    print(f"{r['case']:>16s}: packed {r['packed_us']:5.1f} us/layer, split {r['split_us']:5.1f}")
sweep = json.loads((res / "equal_latency_steady512_mixedov1_h100.json").read_text())
pts = sweep["policies"]["continuous"]["points"]
rate = [p["rate"] for p in pts]
ms_per_step = [1e3 * p["seconds"] / p["steps"] for p in pts]
mixed_share = [p["mixed_graph_steps"] / p["steps"] for p in pts]
fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
h1, = ax.plot(rate, ms_per_step, "o-", label="wall ms per step")
ax.set_xlabel("arrival rate (req/s)"); ax.set_ylabel("ms per step")
ax2 = ax.twinx(); h2, = ax2.plot(rate, mixed_share, "s--", color="C1", label="share of mixed steps")
ax2.set_ylabel("share of mixed steps")
ax.legend(handles=[h1, h2], loc="lower left"); plt.show()
fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
for label, name in (("piecewise", "equal_latency_steady512_s1206_h100"),
                    ("full", "equal_latency_steady512_fullgraphs_s1206_h100")):
    pts = json.loads((res / f"{name}.json").read_text())["policies"]["continuous"]["points"]
    pts = [p for p in pts if not p["saturated"]]
    ax.plot([p["rate"] for p in pts], [p["mixed_graph_gpu_ms_per_step"] for p in pts], "o-", label=f"mixed step, {label}")
    ax.plot([p["rate"] for p in pts], [p["decode_graph_gpu_ms_per_step"] for p in pts], "s--", label=f"decode step, {label}")
ax.set_xlabel("arrival rate (req/s)"); ax.set_ylabel("GPU ms per step (H100)"); ax.legend(fontsize=8); plt.show()"""),
md(r"""### The launch plan of small steps
A decode-only step below 512 (sequence, KV head) pairs runs the fused decode attention (RoPE, cache write, attention
and split merge in one kernel). *How* it is launched -- KV tile, warps, stages, and how many splits share each
sequence's history -- matters as much as the kernel: until the seventeenth session it used phase 3's plan, tuned on
phase 3's own kernel (one split per sequence once the pairs fill the SMs). A sweep through the fused kernel on the
H100 (`sweep_small_steps.py`, 24 configurations per case) found that 32-511 pairs want about four programs per SM:
splits = 512 / pairs, each at least one tile, on 128-token tiles for a bf16 cache and 64-token tiles for FP8.
`fused_plan` is that rule; below it the plan per batch size (TinyLlama's 4 KV heads, a 2,048-token table), then the
measured per-layer times (22 layers in a CUDA graph): the old plan, the sweep's best, and the new plan timed in a
later call (whose tables were only as wide as each case's context, which caps the splits at whole tiles: B=8 on
128-token tiles got 2 splits there, 4 in the engine). Note the FP8 pool: halving the bytes does not help a step that is latency-bound -- at these batches an
FP8 tile costs more than a bf16 one."""),
code(r"""# NBVAL_CHECK_OUTPUT
import torch
from phase4_scheduler.decode_attention import fused_plan
print("B <= 7: phase 3's decode_plan (its split count depends on the GPU's SM count)")
for b in (8, 16, 32, 64, 96, 127):
    plans = [fused_plan(torch.device("cpu"), b, 4, 2048, fp8) for fp8 in (False, True)]
    print(f"B={b:3d}: " + "   ".join(f"{dt} tile {p[0]:3d} x {p[1]} warps, {p[3]:2d} splits"
                                    for dt, p in zip(("bf16", "fp8 "), plans)))"""),
code(r"""sweep = json.loads((res / "small_steps_sweep_decode_s1207c_h100.json").read_text())["rows"]
new = {(f"{r['batch']}x{r['ctx']}", r["kv_cache_dtype"]): r["fused_us"]
       for r in json.loads((res / "decode_attention_plan_s1207d_h100.json").read_text())["rows"]}
fig, axes = plt.subplots(1, 2, figsize=(10, 3), layout="constrained", sharey=True)
for ax, dt in zip(axes, ("bf16", "fp8")):
    rows = [r for r in sweep if r["kv_cache_dtype"] == dt]
    x = range(len(rows))
    ax.bar([i - 0.27 for i in x], [r["default_us"] for r in rows], 0.27, label="old plan (phase 3's)")
    ax.bar(list(x), [r["best_us"] for r in rows], 0.27, label="sweep's best")
    ax.bar([i + 0.27 for i in x], [new[(r["case"], dt)] for r in rows], 0.27, label="fused_plan, later call")
    ax.set_xticks(list(x), [r["case"] for r in rows], fontsize=8); ax.set_title(f"{dt} cache (H100)")
    ax.set_xlabel("batch x context tokens")
axes[0].set_ylabel("us per layer"); axes[0].legend(fontsize=8); plt.show()"""),
md(r"""### B=1 at the bar: an epilogue instead of a prologue, tiles timed where they run
At B=1 a decode step is ~90 skinny GEMVs (one program per few weight rows, weights streamed once) and 22 attention
kernels; the H100 bar is 0.92 ms a token, 80% of the 0.73 ms it takes to read 2.2 GB of weights. Four changes took
the engine from 0.977 to 0.910-0.920 ms (eighteenth session), each measured against its baseline:
1. **SiLU-and-mul moved from the down projection's prologue to the gate_up projection's epilogue.** As a prologue,
   *every* program of the down GEMV recomputes silu(gate) * up over all I = 5,632 columns it multiplies by; as an
   epilogue, the program that produced gate row j pairs it with up row I + j (the same pairing the RoPE epilogue
   uses) and computes it once. Same bits either way (the tests check bitwise equality), 40 µs a token less.
2. **Whole-row tiles, chosen inside the step.** The autotuner times each tile alone; in the step each GEMV starts
   under programmatic dependent launch while the previous kernel finishes, and may request weights (which never
   change) before it waits. A tile that holds the whole row requests its entire slab then. Timing every candidate
   inside the captured step (`sweep_gemv_chain.py`) picked those tiles: 0.895 vs 0.927 ms a step.
3. **A greedy argmax of our own**: torch's single-block reduce over 32,000 logits took 9.3 µs, ours 3 µs.
4. **The lm_head GEMV stores fp32 logits itself** (rounded to bf16 first: the same values), so the graph loses its
   conversion kernel.

The cell below counts the SiLU work of both placements for TinyLlama's MLP at the tiles the engine uses."""),
code(r"""# NBVAL_CHECK_OUTPUT
from phase4_scheduler.skinny_gemm import step_tile
hidden, inter = 2048, 5632
bn_down = step_tile(hidden, inter)[0]  # rows per program of the down GEMV (K = I = 5,632)
programs = hidden // bn_down
print(f"down GEMV: {programs} programs of {bn_down} rows; tile {step_tile(hidden, inter)}")
print(f"SiLU-and-mul evaluations as a prologue: {programs * inter:,} (each program: all {inter:,} columns)")
print(f"SiLU-and-mul evaluations as an epilogue: {inter:,} (each gate/up pair once)")
print(f"gate_up tile {step_tile(2 * inter, hidden)}, qkv tile {step_tile(2560, hidden)}: one K tile = the whole row")"""),
code(r"""runs = [("latency_gemv_s1208_h100.json", "SiLU epilogue A/B"), ("latency_s1208j_h100.json", "final code")]
fig, ax = plt.subplots(figsize=(8, 3), layout="constrained")
labels, values = [], []
for name, title in runs:
    for v in json.loads((res / name).read_text())["variants"]:
        labels.append(f"{title}: {v['variant'].replace('graph+fused', 'engine')}")
        values.append(v["engine_ms_per_token"])
ax.barh(range(len(values)), values, color=["C1" if x > 0.92 else "C2" for x in values])
ax.axvline(0.92, color="k", ls="--", lw=1, label="bar: 0.92 ms (80% of the roofline)")
ax.set_yticks(range(len(values)), labels, fontsize=7); ax.invert_yaxis(); ax.set_xlim(0.85, 1.0)
ax.set_xlabel("ms per token, B=1, H100 (engine, one call per file)"); ax.legend(fontsize=8); plt.show()"""),
md(r"""## 7. What was measured on the GPUs
The issue's targets — B=1 decode ≤ 0.92 ms/token on TinyLlama-1.1B shapes, ≥ 100k output tokens/s on
1024 × (128 in, 128 out), ≥ 3x over static batching on ShareGPT, ≥ 95% of reserved KV blocks usable — are gate
criteria (`make phase4`); on this CPU machine the gate quotes the latest recorded GPU runs from `results/*.json`
(an H200 since 2026-12-04; the H100 records stay beside them). The cell below draws the H100 files (no GPU needed):
CUDA graphs, the fused model and overlapped decode brought B=1 to 1.23 ms/token (forward 1.21 ms, roofline 0.74) and ahead of vLLM, but not to the target; admission batching turned
continuous batching from slower than static (0.95x) into 1.68x faster on ShareGPT, and 1.57x at equal p50 latency.
On the H100 again (2026-12-06, vLLM 0.25.0 in the same lease): B=1 0.984 ms/token then (75% of the roofline; vLLM 1.565) and 0.910-0.920 ms/token since the eighteenth session (80-82.5% of the roofline: the bar met, at the edge; the SiLU-and-mul in the gate_up GEMV's epilogue, whole-row GEMV tiles chosen inside the step, a greedy argmax kernel), offline 103.1k-103.6k tok/s (vLLM 36.3k), continuous/static at equal p50 1.96x with 512 seats. On the H200 B=1 reached 0.834 ms/token (63% of its roofline; ninth session), offline 102.6k-105.6k tok/s, and continuous/static at equal p50 1.90x with 256 seats, 2.35x with 512; the README has those runs. The profile shows where a decode step's GPU time goes. README.md, "Why the targets are missed", explains each gap."""),
code(r"""import tempfile
from pathlib import Path
from IPython.display import Image, display
from common.report import load_results
from phase4_scheduler import plots

results = load_results(plots.PHASE_DIR)
out = Path(tempfile.mkdtemp())
for fn in (plots.plot_b1, plots.plot_sharegpt, plots.plot_profile):
    try:
        drawn = fn(results, out)
        print(fn.__name__, {k: round(v, 2) for k, v in drawn.items()})
    except KeyError as e:  # a results file not recorded yet
        print(fn.__name__, "skipped:", e)
for png in sorted(out.glob("*.png")):
    display(Image(filename=str(png)))"""),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, str(Path(__file__).resolve().parents[1] / "phase4_scheduler" / "continuous_batching.ipynb"))
