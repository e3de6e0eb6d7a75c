"""The engine over phase 3's FP8 KV pool (e4m3 + an fp16 scale per token and KV head): sizing, numerics against the
full-precision pool, determinism under preemption (recompute re-quantizes the same K/V), no leaks, bad input."""
import pytest
import torch

from common.sampling import SamplingParams
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.llm import LLM
from phase4_scheduler.model_runner import FP8, kv_bytes_per_token
from phase4_scheduler.tests.engine_helpers import prompts


GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)


def test_fp8_pool_holds_more_blocks_in_the_same_memory(tiny):
    full = LLMEngine(tiny, kv_memory="1MiB", detokenize=False)
    fp8 = LLMEngine(tiny, kv_memory="1MiB", detokenize=False, kv_cache_dtype="fp8")
    cfg = tiny.config
    ratio = kv_bytes_per_token(cfg, tiny.dtype) / kv_bytes_per_token(cfg, tiny.dtype, "fp8")
    assert kv_bytes_per_token(cfg, tiny.dtype, "fp8") == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (
        cfg.head_dim + 2)
    assert fp8.kv.num_total_blocks == pytest.approx(full.kv.num_total_blocks * ratio, rel=0.02)
    assert fp8.runner.k_cache.dtype == FP8 and fp8.runner.k_scale.dtype == torch.float16
    assert fp8.runner.nbytes() <= 2**20 and full.runner.k_scale is None
    assert fp8.runner.nbytes() == fp8.kv.num_total_blocks * 16 * kv_bytes_per_token(cfg, tiny.dtype, "fp8")


def test_fp8_logits_close_to_the_full_precision_pool(tiny):
    """One prefill + decode steps through the runner on both pools: the FP8 pool changes the logits by its
    quantization error only (nonzero: the pool really is FP8)."""
    p = prompts(1, seed=3, lo=30, hi=31)[0]
    logits = []
    for dtype in ("auto", "fp8"):
        eng = LLMEngine(tiny, num_blocks=16, block_size=8, detokenize=False, kv_cache_dtype=dtype)
        r = eng.runner
        n = len(p)
        ids, pos = torch.tensor(p + [p[-1]]), torch.arange(n + 1)
        table = [list(range(5))]  # 40 slots
        out1 = r.execute(ids[:n], pos[:n], [n], [n], table, torch.arange(n))  # prefill
        out2 = r.execute(ids[n:], pos[n:], [1], [n + 1], table, torch.tensor([n]))  # one decode step
        logits.append(torch.cat([out1, out2]))
    diff = (logits[0] - logits[1]).abs().max().item()
    scale = logits[0].abs().max().item()
    assert 0 < diff < 0.05 * scale, (diff, scale)


def test_fp8_engine_deterministic_under_preemption_and_leaks_nothing(tiny):
    ps = prompts(6, seed=4)
    big = LLM(engine=LLMEngine(tiny, num_blocks=64, block_size=8, kv_cache_dtype="fp8")).generate(ps, GREEDY)
    small_eng = LLMEngine(tiny, num_blocks=12, block_size=4, kv_cache_dtype="fp8")
    small = LLM(engine=small_eng).generate(ps, GREEDY)
    assert [o.output_token_ids for o in small] == [o.output_token_ids for o in big]
    assert small_eng.scheduler.num_preemptions > 0
    assert small_eng.kv.num_free_blocks == small_eng.kv.num_total_blocks


def test_bad_kv_cache_dtype(tiny):
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        LLMEngine(tiny, num_blocks=8, kv_cache_dtype="int4")


@pytest.mark.gpu
def test_gpu_fp8_pool_graphs_and_overlap_match_eager():
    """On the GPU (bf16 model, Triton kernels): the FP8 pool through CUDA graphs + overlapped decode gives the eager
    FP8 engine's tokens (the same kernels, replayed)."""
    from common.config import ModelConfig
    from common.llama import LlamaForCausalLM
    from common.model_loader import LoadedModel
    from common.weights import random_state_dict

    cfg = ModelConfig(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    dev = torch.device("cuda")
    state = random_state_dict(cfg, seed=0, std=0.1, dtype=torch.bfloat16, device=dev)
    loaded = LoadedModel(cfg, LlamaForCausalLM.from_state_dict(cfg, state, dtype=torch.bfloat16, device=dev),
                         None, "tiny bf16", dev, torch.bfloat16)
    ps = prompts(9, seed=5)
    kw = {"num_blocks": 128, "block_size": 16, "max_num_seqs": 16, "detokenize": False, "kv_cache_dtype": "fp8"}
    eager = LLM(engine=LLMEngine(loaded, cuda_graph=False, **kw)).generate(ps, GREEDY)
    graphed_eng = LLMEngine(loaded, cuda_graph=True, **kw)
    graphed = LLM(engine=graphed_eng).generate(ps, GREEDY)
    assert [o.output_token_ids for o in graphed] == [o.output_token_ids for o in eager]
    assert graphed_eng.overlap and graphed_eng.counters["num_overlapped_steps"] > 0
