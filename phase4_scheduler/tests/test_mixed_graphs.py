"""Piecewise graphs for steps with a prefill (mixed_graphs.py): the segmented forward gives the eager forward's
logits whatever sits in the padding rows, the engine's greedy tokens are unchanged, bad setups are refused. CPU:
segments run eagerly (capture=False) on the fused reference model; GPU: captured, against the eager engine."""
import pytest
import torch

from common.sampling import SamplingParams
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.llm import LLM
from phase4_scheduler.mixed_graphs import MixedGraphs, token_buckets

DEV = "cuda" if torch.cuda.is_available() else "cpu"
GREEDY = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
PROMPTS = [[1, 5, 9, 200, 31] * 3, [7] * 19, [3, 4], list(range(100, 140))]


def engine(**kw):
    return LLMEngine.from_model("tinyllama-1.1b", device=DEV, random_weights=True, num_layers=2, num_blocks=32,
                                max_model_len=128, max_num_batched_tokens=48, fuse=True, dtype=torch.float32, **kw)


def test_token_buckets():
    assert token_buckets(8192) == [16, 32, 64, 128, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 1792,
                                   2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168, 8192]
    assert token_buckets(48) == [16, 32, 48] and token_buckets(10) == [10]
    assert token_buckets(1000)[-6:] == [448, 512, 640, 768, 896, 1000]
    big = token_buckets(2 ** 20)
    assert big[-4:] == [131072, 262144, 524288, 2 ** 20] and big == sorted(set(big))
    for n in range(257, 8193):  # four buckets an octave: a step of n > 256 tokens pads by less than 25%
        assert next(b for b in token_buckets(8192) if b >= n) < 1.25 * n
    with pytest.raises(ValueError, match="at least 2"):
        token_buckets(1)


def test_segmented_forward_matches_the_eager_one_with_garbage_padding():
    eng = engine(cuda_graph=False)
    r = eng.runner
    mixed = MixedGraphs(r, 48, capture=False)
    assert f"{len(r.model.layers) + 1} graphs each" in repr(mixed)
    # a mixed step: a 5-token prefill chunk of request 0 and a 9-token one of request 1 (positions from 0 and 3)
    from phase4_scheduler.model_runner import BatchAttention
    ids = torch.tensor([11, 12, 13, 14, 15, 21, 22, 23, 24, 25, 26, 27, 28, 29])
    pos = torch.tensor([0, 1, 2, 3, 4, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    cu = torch.tensor([0, 5, 14], dtype=torch.int32)
    tables = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    slots = torch.tensor([0, 1, 2, 3, 4, 35, 36, 37, 38, 39, 40, 41, 42, 43])
    lens = torch.tensor([5, 12], dtype=torch.int32)
    last = cu[1:].long() - 1
    kc0, vc0 = r.k_cache.clone(), r.v_cache.clone()
    want = r.forward(ids, pos, BatchAttention(r, tables, lens, slots, cu, 9), last)
    for buf in (mixed.h, mixed.res, mixed.qkv, mixed.attn):
        buf.normal_(0, 1e3)  # the padding rows (14..16 of bucket 16) hold garbage: it must not matter
    r.k_cache.copy_(kc0)
    r.v_cache.copy_(vc0)
    got = mixed.run(ids, pos, BatchAttention(r, tables, lens, slots, cu, 9), last)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got.shape == (2, eng.config.vocab_size)


def test_engine_tokens_unchanged_with_segmented_mixed_steps():
    ref = [o.output_token_ids for o in LLM(engine=engine(cuda_graph=False)).generate(PROMPTS, GREEDY)]
    eng = engine(cuda_graph=False)
    eng.runner.mixed = MixedGraphs(eng.runner, 48, capture=False)
    calls = []
    inner = eng.runner.mixed.run
    eng.runner.mixed.run = lambda *a: (calls.append(a[0].shape[0]), inner(*a))[1]
    assert [o.output_token_ids for o in LLM(engine=eng).generate(PROMPTS, GREEDY)] == ref
    assert calls and max(calls) <= 48, "the prefill steps must have gone through the segmented forward"
    shapes = eng.runner.step_shapes()  # no decode graphs here (cuda_graph=False): the mixed ones only
    assert shapes == {"mixed_graph_steps": len(calls), "mixed_graph_tokens": sum(calls),
                      "mixed_graph_padded_tokens": sum(next(b for b in (16, 32, 48) if b >= c) for c in calls)}


def test_refused_without_the_fused_model_or_a_gpu():
    eng = LLMEngine.from_model("tinyllama-1.1b", device="cpu", random_weights=True, num_layers=1, num_blocks=8,
                               max_model_len=64)
    with pytest.raises(TypeError, match="fused model"):
        MixedGraphs(eng.runner, 32, capture=False)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            MixedGraphs(engine(cuda_graph=False).runner, 32)


@pytest.mark.gpu
def test_gpu_engine_with_mixed_graphs_gives_the_eager_tokens():
    base = dict(cuda_graph=True)
    ref = [o.output_token_ids for o in LLM(engine=engine(mixed_graphs=False, **base)).generate(PROMPTS, GREEDY)]
    eng = engine(mixed_graphs=True, **base)
    assert eng.runner.mixed is not None and eng.runner.mixed.buckets == [16, 32, 48]
    calls = []
    inner = eng.runner.mixed.run
    eng.runner.mixed.run = lambda *a: (calls.append(a[0].shape[0]), inner(*a))[1]
    assert [o.output_token_ids for o in LLM(engine=eng).generate(PROMPTS, GREEDY)] == ref
    assert calls


def test_mixed_graphs_are_captured_up_to_a_cap(monkeypatch):
    """The runner is asked for mixed-step graphs up to the step budget or MIXED_GRAPH_MAX_TOKENS, whichever is
    smaller: the static baseline's 2^20-token budget, captured in full, ran an 80 GB H100 out of memory."""
    import phase4_scheduler.engine as engine_mod
    from phase4_scheduler.static_batching import static_engine

    asked = []
    real = engine_mod.ModelRunner

    def recording(*a, **kw):
        asked.append(kw["mixed_graph_tokens"])
        return real(*a, **kw)

    monkeypatch.setattr(engine_mod, "ModelRunner", recording)
    eng = engine()
    static_engine(eng.loaded, 4, num_blocks=32, max_model_len=128, fuse=True)
    engine(mixed_graphs=False)
    assert asked == [48, engine_mod.MIXED_GRAPH_MAX_TOKENS, 0]


def full_mode_engine(**kw):
    """A CPU engine whose prefill steps take the full mixed-step graphs' path (capture=False: the same forward over
    the same static buffers, eagerly), over decode graphs likewise uncaptured (their batch and table width)."""
    from phase4_scheduler.cuda_graphs import DecodeGraphs

    eng = engine(cuda_graph=False, max_num_seqs=8, **kw)
    r = eng.runner
    r.graphs = DecodeGraphs(r, 8, r.max_model_len, capture=False)
    r.mixed = MixedGraphs(r, 48, capture=False, full=True)
    assert "1 graph each, attention inside (full)" in repr(r.mixed)
    return eng


def test_engine_tokens_unchanged_with_full_mixed_graphs():
    """Full mode: sequences padded to the decode graphs' batch (empty ones), tokens padded to the bucket (scratch
    slot); the greedy tokens are the eager engine's."""
    ref = [o.output_token_ids for o in LLM(engine=engine(cuda_graph=False, max_num_seqs=8)).generate(PROMPTS, GREEDY)]
    eng = full_mode_engine()
    calls = []
    inner = eng.runner.mixed.run_full
    eng.runner.mixed.run_full = lambda *a, **k: (calls.append((a[0].shape[0], a[4].shape[0])), inner(*a, **k))[1]
    assert [o.output_token_ids for o in LLM(engine=eng).generate(PROMPTS, GREEDY)] == ref
    assert calls and all(n <= 48 and b <= 8 for n, b in calls)
    assert eng.runner.step_shapes()["mixed_graph_steps"] == len(calls)


def test_full_mixed_graph_scatter_matches_host_ids():
    """Overlapped mixed steps hand over ids[dst] as device tokens[rows]: the same logits as the ids from the host."""
    eng = full_mode_engine()
    r, mixed = eng.runner, eng.runner.mixed
    ids = torch.tensor([11, 12, 13, 14, 15, 21, 22, 23, 24])
    pos = torch.tensor([0, 1, 2, 3, 4, 3, 4, 5, 6])
    cu = torch.tensor([0, 5, 9], dtype=torch.int32)
    tables = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    slots = torch.tensor([0, 1, 2, 3, 4, 35, 36, 37, 38])
    lens = torch.tensor([5, 7], dtype=torch.int32)
    kc0, vc0 = r.k_cache.clone(), r.v_cache.clone()
    want = mixed.run_full(ids, pos, slots, cu, lens, tables).clone()  # a view of the shared logits buffer
    r.k_cache.copy_(kc0)
    r.v_cache.copy_(vc0)
    holes = ids.clone()
    holes[[4, 8]] = 0
    got = mixed.run_full(holes, pos, slots, cu, lens, tables,
                         scatter=(torch.tensor([99, 15, 24]), torch.tensor([1, 2]), torch.tensor([4, 8])))
    torch.testing.assert_close(got, want)
    assert got.shape == (2, eng.config.vocab_size)
    assert got.data_ptr() == mixed.logits.data_ptr()  # every bucket converts into one buffer, not one per bucket


def test_full_mixed_graphs_refused_without_decode_graphs():
    with pytest.raises(ValueError, match="decode graphs"):
        MixedGraphs(engine(cuda_graph=False).runner, 32, capture=False, full=True)


@pytest.mark.gpu
def test_gpu_engine_with_full_mixed_graphs_gives_the_eager_tokens():
    """Captured: one graph per bucket with phase 3's flat-grid attention inside it, against the eager engine."""
    ref = [o.output_token_ids for o in LLM(engine=engine(mixed_graphs=False, cuda_graph=True)).generate(PROMPTS, GREEDY)]
    eng = engine(mixed_graphs="full", cuda_graph=True)
    assert eng.runner.mixed is not None and eng.runner.mixed.full and eng.runner.mixed.graphs  # captured
    calls = []
    inner = eng.runner.mixed.run_full
    eng.runner.mixed.run_full = lambda *a, **k: (calls.append(a[0].shape[0]), inner(*a, **k))[1]
    assert [o.output_token_ids for o in LLM(engine=eng).generate(PROMPTS, GREEDY)] == ref
    assert calls
