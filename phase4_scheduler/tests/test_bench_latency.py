"""bench_latency's B=1 loop (shared with profile_host) on the CPU engine: one greedy request stepped to its end."""
import torch

from common.model_loader import load_model
from phase4_scheduler.bench_latency import run_greedy
from phase4_scheduler.engine import LLMEngine


def test_run_greedy_returns_every_token_and_each_steps_wall_time():
    lm = load_model("tinyllama-1.1b", device="cpu", random_weights=True, num_layers=1)
    eng = LLMEngine(lm, max_num_seqs=2, max_model_len=64, kv_memory="64MiB")
    prompt = torch.randint(100, 1000, (12,), generator=torch.Generator().manual_seed(0)).tolist()
    run = run_greedy(eng, "r0", prompt, 5)
    again = run_greedy(eng, "r1", prompt, 5)
    assert len(run["tokens"]) == 5 and run["tokens"] == again["tokens"]  # greedy: the same tokens twice
    assert len(run["step_ms"]) >= 5 and min(run["step_ms"]) > 0  # the prompt's step(s) and one per new token
    assert run["ms_per_token"] > 0 and not eng.has_unfinished()
