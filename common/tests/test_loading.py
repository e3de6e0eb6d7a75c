"""Weight loading: GGUF, HF directories (round trip), the HF cache lookup, random init."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from common.config import get_preset
from common.model_loader import find_in_hf_cache, load_model
from common.oracle import CHAT_PROMPTS as PROMPTS
from common.weights import load_gguf, random_state_dict, save_hf_dir
from common import assets


def test_gguf_config_is_smollm2_preset():
    cfg, state = load_gguf(assets.require("smollm2-gguf"))
    preset = get_preset("smollm2-135m")
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "rope_theta", "tie_word_embeddings"):
        assert getattr(cfg, f) == getattr(preset, f), f
    assert len(state) == 272 and "lm_head.weight" not in state
    assert state["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)


def test_hf_dir_round_trip(smollm, tmp_path):
    """Write SmolLM2 in HF format; our loader and transformers both load it back to the same logits."""
    save_hf_dir(smollm.config, smollm.model.state_dict(), tmp_path, tokenizer=smollm.tokenizer.hf)
    assert json.loads((tmp_path / "config.json").read_text())["num_key_value_heads"] == 3
    again = load_model(str(tmp_path), device="cpu")
    assert again.tokenizer.chat_ids(PROMPTS[0]) == smollm.tokenizer.chat_ids(PROMPTS[0])
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids = torch.tensor([smollm.tokenizer.chat_ids(PROMPTS[1])])
    with torch.no_grad():
        ref = smollm.model(ids)
        torch.testing.assert_close(again.model(ids), ref, rtol=0, atol=0)
        torch.testing.assert_close(hf(ids).logits, ref, rtol=1e-5, atol=1e-4)


def _tiny_cfg():
    return get_preset("tinyllama-1.1b").replace(num_hidden_layers=2, hidden_size=128, intermediate_size=256,
                                                num_attention_heads=4, num_key_value_heads=2, head_dim=None,
                                                vocab_size=300)


def test_hf_repo_id_found_in_local_cache(tmp_path, monkeypatch):
    """An HF hub cache laid out by the test: models--Org--Name/{refs/main, snapshots/<rev>/}."""
    cfg = _tiny_cfg().replace(head_dim=32)
    sd = random_state_dict(cfg, seed=3)
    repo = tmp_path / "hub" / "models--TestOrg--Tiny-Llama"
    snap = repo / "snapshots" / "0123abcd"
    save_hf_dir(cfg, sd, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert find_in_hf_cache("TestOrg/Tiny-Llama") == snap
    lm = load_model("TestOrg/Tiny-Llama", device="cpu")
    assert lm.source == f"HF dir {snap}"
    torch.testing.assert_close(lm.model.state_dict()["model.norm.weight"], sd["model.norm.weight"])
    assert find_in_hf_cache("TestOrg/Absent") is None


def test_random_init_has_preset_shapes_and_is_seeded():
    cfg = _tiny_cfg().replace(head_dim=32)
    a, b, c = (random_state_dict(cfg, seed=s) for s in (1, 1, 2))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])
    lm = load_model("tinyllama-1.1b", random_weights=True, num_layers=1, dtype="bf16", device="cpu")
    assert lm.dtype == torch.bfloat16 and lm.config.hidden_size == 2048
    n = sum(p.numel() for p in lm.model.parameters())
    assert n == lm.config.num_params()


def test_num_params_matches_tinyllama_1_1b():
    assert abs(get_preset("tinyllama-1.1b").num_params() - 1_100_048_384) < 1e6
    assert abs(get_preset("smollm2-135m").num_params() - 134_515_008) < 1e5


def test_deepseek_preset_loads_mla_model_and_generates():
    """model_type deepseek_v3 dispatches to the MLA reference; the phase-0 engine drives it via model.make_cache."""
    from common.deepseek import DeepseekV3ForCausalLM, LatentCache
    from common.sampling import SamplingParams
    from phase0_tinyllama.inference_v1 import generate

    lm = load_model("deepseek-v3-tiny", random_weights=True, device="cpu")
    assert isinstance(lm.model, DeepseekV3ForCausalLM)
    assert isinstance(lm.model.make_cache(1, 8, torch.float32, "cpu"), LatentCache)
    ids = torch.randint(0, lm.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(0))
    out = generate(lm.model, ids, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    with torch.no_grad():
        first = lm.model(ids)[:, -1].argmax(-1)
    assert out.shape == (1, 6) and int(out[0, 0]) == int(first)


def test_kv_bytes_per_token_gqa_and_mla():
    assert get_preset("tinyllama-1.1b").kv_bytes_per_token(2) == 2 * 22 * 4 * 64 * 2
    ds = get_preset("deepseek-v3-tiny")
    assert ds.kv_bytes_per_token(2) == ds.num_hidden_layers * (ds.kv_lora_rank + ds.qk_rope_head_dim) * 2
    with pytest.raises(NotImplementedError):
        ds.num_params()


def test_tokenizer_override(tmp_path):
    from common.errors import ModelNotFoundError
    from common.model_loader import load_model

    with pytest.raises(ModelNotFoundError, match="tokenizer.json"):
        load_model("tinyllama-1.1b", device="cpu", random_weights=True, num_layers=1, tokenizer=str(tmp_path))
    src = load_model("smollm2-135m", device="cpu", random_weights=True, num_layers=1).tokenizer
    if src is None:
        pytest.skip("the SmolLM2 GGUF (tokenizer source) is not set up here")
    src.hf.save_pretrained(str(tmp_path))
    lm = load_model("tinyllama-1.1b", device="cpu", random_weights=True, num_layers=1, tokenizer=str(tmp_path))
    assert lm.tokenizer is not None and lm.tokenizer.encode("Paris") == src.encode("Paris")
