"""The DeepSeek-V3 reference (common/deepseek.py) against HF transformers' DeepseekV3ForCausalLM on the same weights."""
import math

import pytest
import torch

from common.config import get_preset
from common.deepseek import (DeepseekV3ForCausalLM, LatentCache, MLAttention, rope_parameters, softmax_scale,
                             to_hf_config)
from phase2_mla.hf_oracle import check_against_hf, make_pair

TINY = get_preset("deepseek-v3-tiny")


@pytest.fixture(scope="module")
def tiny_report():
    return check_against_hf("deepseek-v3-tiny", batch=2, prompt_len=9, max_tokens=5)


def test_prefill_logits_match_hf_in_both_forms(tiny_report):
    assert tiny_report["logit_scale"] > 1.0  # logits are spread out: the comparison has teeth
    assert tiny_report["prefill_err_naive"] < 1e-4
    assert tiny_report["prefill_err_absorbed"] < 1e-4


def test_decode_logits_match_hf_with_latent_and_paged_caches(tiny_report):
    for key in ("decode_err_naive_latent", "decode_err_absorbed_latent", "decode_err_absorbed_paged"):
        assert tiny_report[key] < 1e-4, key


def test_greedy_generation_is_token_identical(tiny_report):
    assert tiny_report["all_greedy_identical"], tiny_report


@pytest.mark.parametrize("change", [dict(q_lora_rank=None), dict(rope_scaling=None)],
                         ids=["no-q-lora (V2-Lite style)", "plain-rope"])
def test_variants_match_hf(change):
    rep = check_against_hf(cfg=TINY.replace(**change), batch=1, prompt_len=7, max_tokens=3)
    assert rep["prefill_err_absorbed"] < 1e-4 and rep["prefill_err_naive"] < 1e-4
    assert rep["all_greedy_identical"]


def test_yarn_frequencies_and_scale_equal_hfs():
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding

    for cfg in (TINY, get_preset("deepseek-v3")):
        hcfg = to_hf_config(cfg)
        rot = DeepseekV3RotaryEmbedding(hcfg)
        inv, factor = rope_parameters(cfg)
        torch.testing.assert_close(inv, rot.inv_freq.float())
        assert factor == pytest.approx(rot.attention_scaling)
    hcfg = to_hf_config(TINY)
    with torch.device("meta"):
        attn = DeepseekV3Attention(hcfg, 0)
    assert softmax_scale(TINY) == pytest.approx(attn.scaling)
    assert softmax_scale(TINY) > (32 + 16) ** -0.5  # YaRN's mscale^2 is in it


def test_yarn_mscale_formula():
    cfg = TINY.replace(rope_scaling=dict(TINY.rope_scaling, factor=40.0, mscale_all_dim=0.707))
    m = 0.1 * 0.707 * math.log(40.0) + 1.0
    assert softmax_scale(cfg) == pytest.approx((48 ** -0.5) * m * m)


def test_absorbed_and_naive_share_weights_and_agree():
    torch.manual_seed(0)
    naive = MLAttention(TINY, 0, absorbed=False)
    absorbed = MLAttention(TINY, 0, absorbed=True)
    absorbed.load_state_dict(naive.state_dict())
    x = torch.randn(2, 6, TINY.hidden_size)
    pos = torch.arange(6).expand(2, 6)
    from common.deepseek import rope_cos_sin
    cos, sin = rope_cos_sin(TINY, pos)
    torch.testing.assert_close(naive(x, cos, sin), absorbed(x, cos, sin), atol=1e-5, rtol=1e-4)


def test_latent_cache_holds_only_latent_and_rope_key():
    cache = LatentCache(TINY, batch_size=3, max_len=10)
    assert cache.buf.shape == (TINY.num_hidden_layers, 3, 10, TINY.kv_lora_rank + TINY.qk_rope_head_dim)
    assert "64 latent + 16 rope" in repr(cache)
    with pytest.raises(RuntimeError, match="latent cache full"):
        cache.update(0, torch.randn(3, 11, 64), torch.randn(3, 11, 16))


def test_moe_layers_and_non_mla_configs_are_refused():
    with pytest.raises(NotImplementedError, match="phase 6"):
        DeepseekV3ForCausalLM(TINY.replace(extra=dict(TINY.extra, first_k_dense_replace=1)))
    with pytest.raises(ValueError, match="not an MLA config"):
        DeepseekV3ForCausalLM(get_preset("tinyllama-1.1b"))


def test_state_dict_names_are_hfs_and_mismatches_are_named():
    hf, state = make_pair(TINY)
    with torch.device("meta"):
        ours = DeepseekV3ForCausalLM(TINY)
    assert set(ours.state_dict()) == set(state)
    with pytest.raises(ValueError, match="missing"):
        DeepseekV3ForCausalLM.from_state_dict(TINY, {k: v for k, v in state.items() if "kv_b_proj" not in k})
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, seq\]"):
        DeepseekV3ForCausalLM.from_state_dict(TINY, state)(torch.tensor([1, 2, 3]))


@pytest.mark.gpu
def test_on_gpu_the_paged_cache_runs_the_compiled_kernel_and_matches_hf():
    rep = check_against_hf("deepseek-v3-tiny", batch=3, prompt_len=21, max_tokens=6, device="cuda")
    assert rep["device"] == "cuda" and rep["max_err"] < 1e-3 and rep["all_greedy_identical"], rep
