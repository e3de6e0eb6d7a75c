"""StaticKVCache (device-side position, masked full-buffer attention) and the CUDA-graph decode step."""
import pytest
import torch

from common.config import PRESETS
from common.kv_cache import ContiguousKVCache, StaticKVCache
from common.llama import LlamaForCausalLM
from common.sampling import SamplingParams
from common.weights import random_state_dict
from phase0_tinyllama.inference_v1 import stream_kv_cache


def tiny_model(device="cpu", dtype=torch.float32):
    cfg = PRESETS["tinyllama-1.1b"].replace(num_hidden_layers=2, hidden_size=128, intermediate_size=256,
                                            num_attention_heads=8, num_key_value_heads=2, vocab_size=512)
    return LlamaForCausalLM.from_state_dict(cfg, random_state_dict(cfg, seed=3), dtype=dtype, device=device)


def run_steps(model, cache, ids, steps):
    """Prefill then `steps` greedy decode steps; returns every step's logits [B, V]."""
    out = [model(ids, cache=cache, last_only=True)[:, -1]]
    for _ in range(steps):
        tok = out[-1].argmax(-1)
        out.append(model(tok[:, None], cache=cache)[:, -1])
    return torch.stack(out)


@torch.inference_mode()
def test_static_cache_logits_match_contiguous():
    model = tiny_model()
    ids = torch.randint(0, 512, (3, 9), generator=torch.Generator().manual_seed(0))
    ref = run_steps(model, ContiguousKVCache(model.config, 3, 32), ids, 10)
    static = StaticKVCache(model.config, 3, 32)
    got = run_steps(model, static, ids, 10)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert static.seq_len == 9 + 10


@torch.inference_mode()
def test_static_cache_positions_and_reset():
    model = tiny_model()
    cache = StaticKVCache(model.config, 2, 16)
    cache.advance(5)
    assert cache.positions(2, 3).tolist() == [[5, 6, 7]] * 2
    cache.seq_len = 0
    assert int(cache.pos) == 0


def test_graph_step_refuses_other_caches_and_cpu():
    from common.cuda_graph import GraphedDecodeStep

    model = tiny_model()
    with pytest.raises(TypeError, match="StaticKVCache"):
        GraphedDecodeStep(model, ContiguousKVCache(model.config, 1, 8), 1)
    with pytest.raises(RuntimeError, match="CUDA"):
        GraphedDecodeStep(model, StaticKVCache(model.config, 1, 8), 1)
    with pytest.raises(RuntimeError, match="CUDA"):
        next(stream_kv_cache(model, torch.zeros(1, 4, dtype=torch.long), SamplingParams(max_tokens=2),
                             cuda_graph=True))


@pytest.mark.gpu
@torch.inference_mode()
def test_graphed_decode_matches_eager_on_gpu():
    """Replaying the captured step runs the same kernels as the eager static-cache step: identical tokens."""
    model = tiny_model("cuda", torch.float32)
    ids = torch.randint(0, 512, (4, 11), generator=torch.Generator().manual_seed(1)).cuda()
    p = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    static = StaticKVCache(model.config, 4, 11 + 40, device="cuda")
    eager = torch.stack(list(stream_kv_cache(model, ids, p, cache=static)), 1)
    graphed = torch.stack(list(stream_kv_cache(model, ids, p, cuda_graph=True)), 1)
    contiguous = torch.stack(list(stream_kv_cache(model, ids, p)), 1)
    assert graphed.tolist() == eager.tolist()
    assert (graphed == contiguous).float().mean().item() >= 0.95
