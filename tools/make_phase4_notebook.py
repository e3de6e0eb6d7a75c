"""Regenerates phase4_scheduler/continuous_batching.ipynb (cells only; execute it with nbconvert afterwards)."""
from pathlib import Path

import nbformat as nbf

nb = nbf.v4.new_notebook()
md = nbf.v4.new_markdown_cell
code = nbf.v4.new_code_cell
nb.cells = [
md("""# Phase 4 — Continuous batching: squeezing the GPU

A thin notebook over the engine in this folder (`scheduler.py`, `kv_cache_manager.py`, `model_runner.py`,
`engine.py`, `server.py`). It runs on a CPU in about a minute with a 2-layer SmolLM2-shaped model; the GPU
measurements are `gpu_run.sh`'s job."""),
code("""%matplotlib inline
import time
import matplotlib.pyplot as plt
import torch
from common.model_loader import load_model
from common.sampling import SamplingParams
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.static_batching import static_engine
torch.manual_seed(0)
loaded = load_model("smollm2-135m", random_weights=True, num_layers=2, device="cpu")"""),
md("""## 1. One step of the engine
Every step the scheduler picks `(request, tokens to compute)` pairs under a token budget: running requests decode
one token each, waiting ones prefill (in chunks when the budget runs out). The KV-cache manager gives each
sequence blocks of 16 token slots from phase 1's allocator."""),
code("""# NBVAL_CHECK_OUTPUT
engine = LLMEngine(loaded, num_blocks=24, max_num_seqs=4, max_num_batched_tokens=48)
lengths = [(40, 12), (8, 30), (25, 20), (60, 8), (12, 40), (30, 16)]
g = torch.Generator().manual_seed(1)
for i, (p, o) in enumerate(lengths):
    engine.add_request(f"r{i}", torch.randint(100, 40000, (p,), generator=g).tolist(),
                       SamplingParams(max_tokens=o, temperature=0.0, ignore_eos=True))
print(engine.scheduler.schedule())"""),
md("""That first plan prefills `r0` whole and starts `r1`, within the 48-token budget. (We asked the scheduler
directly, so let us start over and let the engine drive.)"""),
code("""def trace(engine, reqs):
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
md("""Static batching waits for the longest member of each batch; its seats empty out as members finish. Continuous
batching refills a seat the step after it frees, so the same work takes fewer steps. With only 24 blocks
(384 token slots) the continuous engine may also *preempt*: when a running sequence needs a block and none is
free, the newest request gives its blocks back and is recomputed later — the output tokens are the same (the tests
check it)."""),
md("""## 2. The same tokens, however they are batched"""),
code("""# NBVAL_CHECK_OUTPUT
from common import artifacts
single = artifacts.get("engine.generate")   # phase 0's one-request engine
from phase4_scheduler.llm import LLM
llm = LLM(engine=LLMEngine(loaded, num_blocks=8, max_num_seqs=3, max_num_batched_tokens=32))  # 128 slots: forces preemption
outs = llm.generate([ids for _, ids, _ in reqs], [sp for _, _, sp in reqs])
same = [o.output_token_ids == single(loaded.model, torch.tensor([ids]), sp)[0].tolist() for o, (_, ids, sp) in zip(outs, reqs)]
print("token-identical to the single-request engine:", same, "| preemptions:", llm.engine.stats()["num_preemptions"])"""),
md("""## 3. The OpenAI-compatible server
`titan serve` runs `server.py` (FastAPI + uvicorn) over the `AsyncEngine`. Here it runs in a background thread and
the official `openai` client streams a completion from it."""),
code("""import openai
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
print("\\n".join(l for l in metrics.splitlines() if l.startswith("titan:num_requests") or l.startswith("titan:kv"))[:600])"""),
md("""## 4. A step that carries a prompt
Under Poisson arrivals almost every step admits a request, so the *mixed* step (hundreds of decodes beside a
prompt or a chunk) is the common case, and it is where the engine lost most. Three costs, each visible with
nothing but arithmetic:

1. **CUDA-graph padding.** A graph is captured per token bucket; a step replays the smallest bucket that fits and
   pays for the rest as padding. Powers of two waste up to half a step; four buckets an octave waste < 25%."""),
code("""# NBVAL_CHECK_OUTPUT
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
md("""2. **Empty attention programs.** Phase 3's prefill kernel used a grid of (the longest sequence's query tiles) ×
   (sequences) per KV head, so one long chunk made every decode row launch as many programs as the chunk. The flat
   grid launches one program per query tile actually present (`T // BQ + B`, a binary search finds each tile's
   sequence). With TinyLlama's 8 query heads per KV head a 64-row tile holds BQ = 8 queries:"""),
code("""# NBVAL_CHECK_OUTPUT
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
md("""3. **Host work between the pieces.** Attention sits between graph pieces (its launch depended on the batch), so
   a mixed step launched ~90 kernels from Python for 22 layers, and its inputs went to the GPU with `.to("cuda")`
   seven times — each a copy plus a stream synchronisation, so the step first waited for the one in flight. Now
   the inputs go in one pinned, non-blocking copy, and with the flat grid the whole step can be one graph
   (`TITAN_MIXED_GRAPHS=full`).

What the H100 said (results/, measured 2026-12-05): mixed-step attention per layer, and the steady-state sweep
at 512 seats. Wall time per step *falls* as the load rises, because fewer of the steps are mixed."""),
code("""import json
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
ax.legend(handles=[h1, h2], loc="lower left"); plt.show()"""),
md("""## 5. What is measured on the GPU (`gpu_run.sh`, `bench_offline.py`, `bench_serve.py`)
The issue's targets — B=1 decode ≤ 0.92 ms/token on TinyLlama-1.1B shapes, ≥ 100k output tokens/s on
1024 × (128 in, 128 out), ≥ 3x over static batching on ShareGPT, ≥ 95% of reserved KV blocks usable — are gate
criteria that run on the H100 (`make phase4`). They need CUDA graphs for the decode step; without them the eager
engine is launch-bound (phase 0 measured ~22 ms per step)."""),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, str(Path(__file__).resolve().parents[1] / "phase4_scheduler" / "continuous_batching.ipynb"))
