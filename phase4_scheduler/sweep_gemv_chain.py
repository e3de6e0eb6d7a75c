"""The skinny GEMV's tiles chosen inside the real B=1 decode step, not alone (GPU).

    PYTHONPATH=$PWD TITAN_RESULTS_DIR=$OUT python3 -m phase4_scheduler.sweep_gemv_chain --random-weights
    # then run anything with the winners pinned: TITAN_GEMV_TILES="<the printed string>" python3 -m ...

Why: the autotuner (skinny_gemm.skinny_gemv_tuned) times every candidate tile on its own, where loading weights
before the PDL wait (common/pdl.py) buys nothing; in the decode step each GEMV follows another kernel, so a tile
that streams more of its slab before the wait may win there and lose alone. The small projections (qkv, o: 8-10 MB)
sit at ~3.5 us each on the H200 (results/fused_kernels_h200.json), 1.5 us above their bandwidth time.

Method: one engine at max_num_seqs=1 (one captured decode graph), a 128-token prompt decoded for a while; then, per
projection shape and candidate tile, the tile is pinned (skinny_gemm.PINNED_TILES), the B=1 graph re-captured and
replayed (CUDA events, median of --reps); the default tiles (skinny_gemm.step_tile, or the autotuner's with
TITAN_GEMV_AUTOTUNE=1) are timed at the start and the end of the run (their spread is the noise floor). Writes
results/<--name>.json with every row and the winners as a TITAN_GEMV_TILES string.
"""
from __future__ import annotations

import argparse
import statistics

import torch
import triton
from tqdm.auto import tqdm

from common.bench import write_result
from common.model_loader import load_model
from common.sampling import SamplingParams
from phase4_scheduler import skinny_gemm as sg

# (BLOCK_N, BLOCK_K, warps, programs per SM): both kernels' candidates (skinny_gemm.tile_candidates: the regular
# kernel's autotuner set, PPS 0, then the persistent kernel's), plus one more whole-row tile at 8 warps
CANDIDATES = sg.tile_candidates() + [(2, 2048, 8, 0)]


def shapes(cfg, silu_epilogue: bool = True) -> dict:
    """name -> (N, K, MODE) of the fused model's M = 1 GEMVs (MODE 1: norm prologue, 2: SiLU-and-mul prologue; with
    the SiLU epilogue, fused_model.SILU_EPILOGUE_ENV, gate_up stores the SiLU-and-mul and down is MODE 0)."""
    hq, hkv, d, h, i = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size,
                        cfg.intermediate_size)
    return {"qkv": ((hq + 2 * hkv) * d, h, 1), "o": (h, hq * d, 0), "gate_up": (2 * i, h, 1),
            "down": (h, i, 0 if silu_epilogue else 2), "lm_head": (cfg.vocab_size, h, 0)}


def tile_string(tiles: dict) -> str:
    return ";".join(f"{n}x{k}x{m}=" + ",".join(map(str, t)) for (n, k, m), t in tiles.items())


class StepTimer:
    """Re-captures the engine's B=1 decode graph and times its replays on the inputs of a recorded decode step."""

    def __init__(self, eng, reps: int):
        from phase4_scheduler.cuda_graphs import DecodeGraphs

        self.eng, self.reps, self.make = eng, reps, DecodeGraphs
        self.args = None
        inner = eng.runner.graphs.run

        def record(*a, **k):
            self.args = a[:5]  # token ids, positions, seq_lens, block tables, slot mapping of a B=1 step
            return inner(*a, **k)

        eng.runner.graphs.run = record

    def ms(self) -> float:
        r = self.eng.runner
        r.graphs = self.make(r, 1, self.eng.max_model_len)  # capture with whatever tiles are pinned now
        r.graphs.run(*self.args)  # fill the static buffers with the recorded step's inputs
        g = r.graphs.graphs[1, 0]  # (size, parity)
        times = []
        for _ in range(self.reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return statistics.median(times)


def main(argv=None) -> dict:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--model", default="tinyllama-1.1b")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--shapes", nargs="+", default=["qkv", "o", "gate_up", "down", "lm_head"],
                    help="projections to sweep (the others keep their autotuned tiles)")
    ap.add_argument("--reps", type=int, default=50, help="graph replays per timing (median)")
    ap.add_argument("--name", default="gemv_chain_gpu")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("sweep_gemv_chain needs CUDA (it times the captured decode step on the GPU)")
    from phase4_scheduler.engine import LLMEngine

    loaded = load_model(args.model, device="cuda", dtype=torch.bfloat16, random_weights=args.random_weights)
    eng = LLMEngine(loaded, max_num_seqs=1, max_model_len=512, kv_memory="1GiB", fuse=True, cuda_graph=True,
                    mixed_graphs=False, overlap=False)  # synchronous steps: the recorded inputs are host-side
    timer = StepTimer(eng, args.reps)
    prompt = torch.randint(100, loaded.config.vocab_size - 100, (128,), generator=torch.Generator().manual_seed(0))
    eng.add_request("sweep", prompt.tolist(), SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True))
    while eng.has_unfinished():
        eng.step()
    if timer.args is None:
        raise SystemExit("no B=1 decode step went through the captured graph: nothing to time")
    auto = {str(k): str(v) for t in (sg.skinny_gemv_tuned, sg.skinny_gemv_persistent_tuned)
            for k, v in t.cache.items()}  # what the autotuner chose, per key
    all_shapes = shapes(loaded.config, eng.runner.model.ops.silu_epilogue_on())
    rows, best = [], {}
    base0 = timer.ms()
    for name in tqdm(args.shapes, desc="shapes"):
        n, k, mode = all_shapes[name]
        for tile in CANDIDATES:
            if tile[1] > triton.next_power_of_2(k):
                continue
            sg.PINNED_TILES[(n, k, mode)] = tile
            try:
                t = timer.ms()
                rows.append({"shape": name, "N": n, "K": k, "mode": mode, "tile": list(tile), "step_ms": t})
            except Exception as e:  # a tile that fails to compile or launch must not end the sweep
                rows.append({"shape": name, "tile": list(tile), "error": f"{type(e).__name__}: {e}"})
            finally:
                del sg.PINNED_TILES[(n, k, mode)]
        ok = [r for r in rows if r["shape"] == name and "step_ms" in r]
        if ok:
            win = min(ok, key=lambda r: r["step_ms"])
            best[(n, k, mode)] = tuple(win["tile"])
            print(f"{name}: best {win['tile']} {win['step_ms']:.4f} ms (defaults {base0:.4f})", flush=True)
    base1 = timer.ms()
    sg.PINNED_TILES.update(best)
    pinned_all = timer.ms()
    sg.PINNED_TILES.clear()
    res = {"model": args.model, "default_step_ms": [base0, base1], "all_winners_step_ms": pinned_all,
           "winners": tile_string(best), "autotuned_tiles": auto, "autotune": sg.autotune_on(),
           "default_tiles": {name: sg.step_tile(n, k) for name, (n, k, _) in all_shapes.items()}, "rows": rows}
    print(f"defaults {base0:.4f} / {base1:.4f} ms, all winners pinned {pinned_all:.4f} ms\n"
          f"TITAN_GEMV_TILES=\"{res['winners']}\"")
    write_result("phase4_scheduler", args.name, res)
    return res


if __name__ == "__main__":
    main()
