"""PagedKVCache in the reference model: greedy tokens identical to the contiguous cache, seam entries, errors."""
import pytest
import torch

from common import artifacts
from common.kv_cache import ContiguousKVCache
from phase3_paged_fp8.paged_cache import PagedKVCache, greedy_generate
from phase3_paged_fp8.tests.helpers import DEVICE

ENTRIES = ["kv_cache.paged", "kv_cache.write", "kv_cache.write_ref", "kv_cache.fp8_quantize",
           "attention.paged_decode", "attention.paged_decode_ref", "attention.paged_prefill",
           "attention.paged_prefill_ref"]


@pytest.fixture(scope="module")
def smollm2():
    from common.model_loader import load_model
    return load_model("smollm2-135m", device="cpu", dtype="fp32")


def _prompts(lm):
    ps = [lm.tokenizer.encode(t) for t in ("The capital of France is", "Water boils at a temperature of")]
    n = min(map(len, ps))
    return torch.tensor([p[:n] for p in ps])  # [2, n]


@pytest.mark.parametrize("name", ENTRIES)
def test_seam_entries_resolve(name):
    assert callable(artifacts.get(name))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_greedy_identical_to_contiguous(smollm2, dtype):
    """Real SmolLM2 weights, 30 layers, reference backend: the paged cache changes where K/V live, not the tokens."""
    ids = _prompts(smollm2)
    want = greedy_generate(smollm2.model, ids, 16, ContiguousKVCache(smollm2.config, 2, 40))
    got = greedy_generate(smollm2.model, ids, 16, PagedKVCache(smollm2.config, 2, 40, block_size=5, dtype=dtype))
    assert torch.equal(got, want)


def test_triton_backend_in_the_model(smollm2):
    """The Triton kernels (interpreter on CPU) inside a 2-layer SmolLM2: prefill, then decode steps."""
    from common.llama import LlamaForCausalLM
    cfg = smollm2.config.replace(num_hidden_layers=2)
    state = {k: v for k, v in smollm2.model.state_dict().items()
             if not k.startswith("model.layers.") or int(k.split(".")[2]) < 2}
    model = LlamaForCausalLM.from_state_dict(cfg, state, device=DEVICE)
    ids = _prompts(smollm2).to(DEVICE)
    want = greedy_generate(model, ids, 3, ContiguousKVCache(cfg, 2, 16, device=DEVICE))
    cache = PagedKVCache(cfg, 2, 16, block_size=4, backend="triton", device=DEVICE)
    assert torch.equal(greedy_generate(model, ids, 3, cache), want)
    assert cache.seq_len == ids.shape[1] + 3


def test_fp8_cache_runs_and_is_smaller(smollm2):
    ids = _prompts(smollm2)
    bf16 = PagedKVCache(smollm2.config, 2, 40, dtype="bf16")
    fp8 = PagedKVCache(smollm2.config, 2, 40, dtype="fp8")
    out = greedy_generate(smollm2.model, ids, 4, fp8)
    assert out.shape == (2, 4) and fp8.k.dtype == torch.float8_e4m3fn
    assert fp8.nbytes() / bf16.nbytes() == pytest.approx((64 + 2) / 128)  # 1-byte data + fp16 scale per head


def test_blocks_come_from_phase1_and_go_back(smollm2):
    cache = PagedKVCache(smollm2.config, 3, 33, block_size=8)
    assert cache.tables_source.startswith("phase1_rust_allocator")
    total = cache.tables.num_free_blocks
    greedy_generate(smollm2.model, _prompts(smollm2)[:, :3].repeat(2, 1)[:3], 1, cache)
    assert cache.tables.num_free_blocks < total
    cache.free()
    assert cache.tables.num_free_blocks == total
    assert "PagedKVCache(layers=30" in repr(cache)


def test_errors(smollm2):
    cfg = smollm2.config
    with pytest.raises(ValueError, match="dtype must be one of"):
        PagedKVCache(cfg, 1, 8, dtype="int4")
    with pytest.raises(ValueError, match="backend must be"):
        PagedKVCache(cfg, 1, 8, backend="cuda")
    cache = PagedKVCache(cfg, 1, 4)
    with pytest.raises(RuntimeError, match="KV cache full"):
        smollm2.model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="built for batch 1"):
        smollm2.model(torch.zeros(2, 2, dtype=torch.long), cache=PagedKVCache(cfg, 1, 4))
