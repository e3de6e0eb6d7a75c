"""bench_mixed_attention: a serving step's attention through the one packed prefill launch equals the split (decodes
through the decode kernel, prompts through the prefill kernel) on the same inputs; cases parse or are refused."""
import pytest
import torch

from phase4_scheduler import bench_mixed_attention as bma

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def test_cases_parse_and_bad_ones_are_refused():
    assert bma.parse_case("448x260+2x109") == (448, 260, 2, 109) and bma.parse_case("8x9+0x0") == (8, 9, 0, 0)
    for bad in ("448x260", "0x5+1x3", "4x5+1x0", "4x5+1x1", "4x5+-1x3"):
        with pytest.raises(ValueError):
            bma.parse_case(bad)
    with pytest.raises(SystemExit):
        bma.main(["--cases", "12"])


def _bytes(t):
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("case", [(6, 37, 2, 13), (5, 16, 0, 0), (1, 3, 1, 40)])
def test_packed_step_equals_the_split(case, fp8):
    """Decodes at a block boundary and off it, prompts longer than a tile, over a bf16 cache and phase 3's FP8 one:
    the same outputs from both paths, and the packed path's cache writes (FP8: codes and scales) are the split's (it
    runs second on the same caches: they must be unchanged)."""
    s = bma.build(*case, layers=1, dev=DEV, fp8=fp8)
    assert (s["caches"][0][0].dtype == torch.float8_e4m3fn) == fp8 and (s["caches"][0][2] is None) == (not fp8)
    a = bma.packed(s, 0)
    before = [c.clone() for c in s["caches"][0] if c is not None]
    for fn in (bma.split, bma.split_ideal):  # the engine's split and its floor
        b = fn(s, 0)
        assert a.shape == b.shape == s["q"].shape
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)
        after = [c for c in s["caches"][0] if c is not None]
        assert all(torch.equal(_bytes(x), _bytes(y)) for x, y in zip(before, after))


@pytest.mark.gpu
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_gpu_bench_case_runs(fp8):
    r = bma.run_case("32x100+1x50", layers=2, fp8=fp8)
    assert r["max_abs_diff"] < 5e-2 and min(r["packed_us"], r["split_us"], r["split_ideal_us"]) > 0
    assert r["tokens"] == 82 and r["kv_cache_dtype"] == ("fp8" if fp8 else "bf16")


def test_split_mixed_steps_give_the_packed_engines_tokens(monkeypatch):
    """TITAN_MIXED_ATTENTION=split: steps with a prefill attend their one-token sequences with the decode kernel
    (Triton kernels, under the interpreter on the CPU) -- the same greedy tokens as the one packed launch, and the
    split really ran (decode-kernel calls from steps that carried a prefill). A bad mode is refused."""
    from common.sampling import SamplingParams
    from phase4_scheduler.engine import LLMEngine
    from phase4_scheduler.llm import LLM
    from phase4_scheduler.tests.engine_helpers import prompts

    ps = [[t % 32000 for t in p] for p in prompts(4, seed=41, lo=6, hi=30)]  # TinyLlama's vocabulary
    greedy = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)

    def run(mode):
        monkeypatch.setenv("TITAN_MIXED_ATTENTION", mode)
        eng = LLMEngine.from_model("tinyllama-1.1b", device=DEV, random_weights=True, num_layers=1, num_blocks=64,
                                   max_model_len=128, max_num_seqs=4, max_num_batched_tokens=16, backend="triton",
                                   dtype=torch.float32, cuda_graph=False)
        calls = []
        inner = eng.runner.decode_fn
        eng.runner.decode_fn = lambda q, *a: (calls.append(q.shape[0]), inner(q, *a))[1]
        return [o.output_token_ids for o in LLM(engine=eng).generate(ps, greedy)], calls, eng

    packed_tokens, packed_calls, _ = run("packed")
    split_tokens, split_calls, eng = run("split")
    assert split_tokens == packed_tokens
    assert len(split_calls) > len(packed_calls), "no step with a prefill went through the decode kernel"
    monkeypatch.setenv("TITAN_MIXED_ATTENTION", "both")
    with pytest.raises(ValueError, match="TITAN_MIXED_ATTENTION"):
        LLMEngine(eng.loaded, num_blocks=8)


@pytest.mark.gpu
def test_gpu_split_mixed_steps_with_graphs_give_the_packed_tokens(monkeypatch):
    """On the GPU with decode graphs and mixed-step graphs (fused model, fp32): split == packed, token for token."""
    from common.sampling import SamplingParams
    from phase4_scheduler.engine import LLMEngine
    from phase4_scheduler.llm import LLM
    from phase4_scheduler.tests.engine_helpers import prompts

    ps = [[t % 32000 for t in p] for p in prompts(12, seed=42, lo=6, hi=90)]
    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    outs = []
    for mode in ("packed", "split"):
        monkeypatch.setenv("TITAN_MIXED_ATTENTION", mode)
        eng = LLMEngine.from_model("tinyllama-1.1b", device="cuda", random_weights=True, num_layers=2, num_blocks=256,
                                   max_model_len=256, max_num_seqs=8, max_num_batched_tokens=64, fuse=True,
                                   dtype=torch.float32)
        assert eng.runner.mixed is not None and eng.runner.mixed_attention == mode
        outs.append([o.output_token_ids for o in LLM(engine=eng).generate(ps, greedy)])
    assert outs[0] == outs[1]
