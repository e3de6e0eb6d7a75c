"""The fused model equals the reference Llama: logits (fp32, tight) and greedy tokens with a KV cache."""
import pytest
import torch

from common.config import ModelConfig
from common.kv_cache import ContiguousKVCache
from common.llama import LlamaForCausalLM
from common.weights import random_state_dict
from phase4_scheduler import skinny_gemm as sg
from phase4_scheduler.fused_model import fuse_model

CFG = ModelConfig(vocab_size=200, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
                  rope_scaling={"rope_type": "linear", "factor": 2.0})
BACKENDS = ["ref", "triton"]  # triton: the kernels under the CPU interpreter


def models(cfg=CFG, backend="ref", prologues=True, rope_epilogue=False):
    state = random_state_dict(cfg, seed=3, std=0.1)
    ref = LlamaForCausalLM.from_state_dict(cfg, {k: v.clone() for k, v in state.items()})
    return ref, fuse_model(LlamaForCausalLM.from_state_dict(cfg, state), backend=backend, prologues=prologues,
                           rope_epilogue=rope_epilogue)


@pytest.mark.parametrize("skinny_max_m", [1, 16])  # T=10 steps: cuBLAS layout (the default), or the M-padded skinny
@pytest.mark.parametrize("backend,prologues,rope_epilogue", [("ref", True, False), ("triton", True, False),
                                                             ("triton", False, False), ("triton", True, True)])
def test_prefill_logits_match_reference(backend, prologues, rope_epilogue, skinny_max_m, monkeypatch):
    monkeypatch.setattr(sg, "SKINNY_MAX_M", skinny_max_m)
    ref, fused = models(backend=backend, prologues=prologues, rope_epilogue=rope_epilogue)
    ids = torch.randint(0, CFG.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids), ref(ids), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused(ids, last_only=True), ref(ids, last_only=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_decode_with_contiguous_cache_matches(backend):
    ref, fused = models(backend=backend, rope_epilogue=backend == "triton")  # M=1 steps take the GEMV epilogue
    prompt = torch.randint(0, CFG.vocab_size, (1, 4), generator=torch.Generator().manual_seed(1))
    caches = [ContiguousKVCache(CFG, 1, 16) for _ in range(2)]
    out = []
    with torch.no_grad():
        for model, cache in zip((ref, fused), caches):
            logits, toks = model(prompt, cache=cache, last_only=True), []
            for _ in range(4):
                toks.append(int(logits[0, -1].argmax()))
                logits = model(torch.tensor([[toks[-1]]]), cache=cache)
            out.append((toks, logits))
    assert out[0][0] == out[1][0]
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("persistent", ["0", "1"])
def test_silu_epilogue_and_persistent_gemv_change_no_bit_of_a_decode_step(monkeypatch, persistent):
    """A T=1 step with SiLU-and-mul in the gate_up epilogue gives the logits of the step with it in the down
    projection's prologue, bit for bit (the same act; the down GEMV sums the same products in the same order), and
    both match the reference; with the persistent GEMV too (its own sums: to rounding)."""
    monkeypatch.setenv(sg.PERSISTENT_ENV, persistent)
    ref, fused = models(backend="triton")
    ids, pos = torch.tensor([7]), torch.tensor([3])
    logits = {}
    with torch.no_grad():
        for on in ("0", "1"):
            monkeypatch.setenv("TITAN_SILU_EPILOGUE", on)
            assert fused.ops.silu_epilogue_on() is (on == "1")
            logits[on] = fused.compute_logits(fused.forward_tokens(ids, pos))
        monkeypatch.delenv("TITAN_SILU_EPILOGUE")
        assert fused.ops.silu_epilogue_on()  # the default
        fused.ops.silu_epilogue = False
        assert not fused.ops.silu_epilogue_on()
        want = ref(ids[None], positions=pos[None])[0]
    assert torch.equal(logits["0"], logits["1"])
    torch.testing.assert_close(logits["1"], want, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("TITAN_SILU_EPILOGUE", "yes")
    with pytest.raises(ValueError, match="TITAN_SILU_EPILOGUE must be 0 or 1"):
        fused.ops.silu_epilogue_on()


class PackedCtx:
    """A runner-style context over a ContiguousKVCache of batch 1: records which entry point the model used."""

    def __init__(self, packed: bool):
        self.cache, self.calls = ContiguousKVCache(CFG, 1, 16), []
        if packed:
            self.attend_packed = self._attend_packed

    def attend(self, layer, q, k, v):  # [1, H, T, D]
        self.calls.append("attend")
        return self.cache.attend(layer, q, k, v)

    def _attend_packed(self, layer, q, k, v):  # [T, H, D]
        self.calls.append("attend_packed")
        out = self.cache.attend(layer, *(x.transpose(0, 1)[None] for x in (q, k, v)))
        return out[0].transpose(0, 1)


@pytest.mark.parametrize("packed", [False, True])
def test_forward_tokens_runner_contract(packed):
    ref, fused = models()
    ids = torch.randint(0, CFG.vocab_size, (6,), generator=torch.Generator().manual_seed(2))
    ctx = PackedCtx(packed)
    with torch.no_grad():
        h = fused.forward_tokens(ids, torch.arange(6), ctx, select=torch.tensor([2, 5]))
        want = ref(ids[None])[0, [2, 5]]
        torch.testing.assert_close(fused.compute_logits(h), want, rtol=1e-5, atol=1e-5)
    assert ctx.calls == ["attend_packed" if packed else "attend"] * CFG.num_hidden_layers


def test_tied_embeddings_gqa_one_kv_head():
    cfg = ModelConfig(vocab_size=100, hidden_size=48, intermediate_size=80, num_hidden_layers=1, num_attention_heads=3,
                      num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=True)
    ref, fused = models(cfg)
    ids = torch.randint(0, 100, (1, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids), ref(ids), rtol=1e-5, atol=1e-5)
    assert fused.lm_head is None


def test_weights_are_moved_not_copied():
    state = random_state_dict(CFG, seed=0)
    model = LlamaForCausalLM.from_state_dict(CFG, state)
    o_ptr = model.model.layers[0].self_attn.o_proj.weight.data_ptr()
    fused = fuse_model(model)
    assert fused.layers[0].o.data_ptr() == o_ptr  # taken as is
    assert len(model.model.layers) == 0  # the reference is consumed: q/k/v/gate/up originals are gone
    n_ref = sum(v.numel() for v in state.values())
    assert sum(p.numel() for p in fused.parameters()) == n_ref
    assert "qkv (128, 64)" in repr(fused) and "gate_up (192, 64)" in repr(fused)
    with pytest.raises(ValueError, match="no layers"):
        fuse_model(model)


def test_warmup_runs_every_decode_path(monkeypatch):
    _, fused = models(backend="triton")  # the interpreter: T=1 (GEMV), logits included
    fused.warmup()
    assert fused.ops.prologues and not fused.ops.rope_epilogue
    monkeypatch.setattr(sg, "SKINNY_MAX_M", sg.SKINNY_KERNEL_MAX_M)  # the tensor-core path when dispatch allows it
    fused.warmup(max_tokens=sg.SKINNY_KERNEL_MAX_M)


def test_bad_arguments():
    with pytest.raises(TypeError, match="LlamaForCausalLM"):
        fuse_model(torch.nn.Linear(2, 2))
    _, fused = models()
    with pytest.raises(ValueError, match="backend"):
        fuse_model(models()[0], backend="cuda")
    with pytest.raises(ValueError, match="\\[T\\]"):
        fused.forward_tokens(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, seq"):
        fused(torch.zeros(3, dtype=torch.long))


@pytest.mark.gpu
@pytest.mark.parametrize("rope_epilogue", [False, True])
@pytest.mark.parametrize("t", [1, 8, 32])
def test_gpu_fused_step_captures_in_a_cuda_graph(t, rope_epilogue):
    """Skinny (T = 1) and cuBLAS-layout (T = 8, 32: above sg.SKINNY_MAX_M) steps replay in a CUDA graph and equal
    the eager fused model."""
    cfg = ModelConfig(vocab_size=1000, hidden_size=256, intermediate_size=704, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    state = random_state_dict(cfg, seed=0, std=0.05, dtype=torch.bfloat16, device="cuda")
    ref = LlamaForCausalLM.from_state_dict(cfg, {k: v.clone() for k, v in state.items()}, dtype=torch.bfloat16,
                                           device="cuda")
    fused = fuse_model(LlamaForCausalLM.from_state_dict(cfg, state, dtype=torch.bfloat16, device="cuda"),
                       rope_epilogue=rope_epilogue)
    assert fused.backend == "triton"
    fused.warmup()
    ids = torch.randint(0, 1000, (t,), device="cuda")
    pos = torch.randint(0, 256, (t,), device="cuda")
    with torch.inference_mode():
        fused.forward_tokens(ids, pos)  # warm (any autotuning) outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fused.compute_logits(fused.forward_tokens(ids, pos))
        ids.copy_(torch.randint(0, 1000, (t,), device="cuda"))
        pos.copy_(torch.randint(0, 256, (t,), device="cuda"))
        graph.replay()
        want = fused.compute_logits(fused.forward_tokens(ids, pos))
        ref_logits = ref(ids[None], pos[None])[0]
    torch.testing.assert_close(out, want)  # new ids and positions went through the replay: stale capture would differ
    torch.testing.assert_close(out.float(), ref_logits.float(), rtol=5e-2, atol=5e-2)  # and it is the model
