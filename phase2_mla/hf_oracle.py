"""HF transformers' DeepseekV3ForCausalLM as the oracle for our MLA model: same random weights, compare.

`check_against_hf` is what the tests, `make phase2` and `make milestone1` call: prefill logits (naive and absorbed
forms), decode logits step by step with a cache (contiguous LatentCache and the paged cache whose decode runs the
Triton kernel), and greedy generation token by token.

NOTE: HF initialises with std 0.02 and unit norms, which makes every attention row nearly uniform; a comparison on
such weights would barely test the softmax. We perturb every weight (norm gains too) before copying the state dict
into both models, so the scores are spread and a wrong scale or rotation shows up in the logits.
"""
from __future__ import annotations

import torch

from common.config import ModelConfig, get_preset
from common.deepseek import DeepseekV3ForCausalLM, LatentCache, generate_greedy, to_hf_config
from common.gate import max_abs_err


def make_pair(cfg: ModelConfig, seed: int = 0, device: str = "cpu"):
    """(hf_model, state_dict) with spread-out random weights, fp32, eager attention."""
    from transformers import DeepseekV3ForCausalLM as HFDeepseek

    torch.manual_seed(seed)
    hcfg = to_hf_config(cfg)
    hcfg._attn_implementation = "eager"
    hf = HFDeepseek(hcfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    state = {k: v + 0.08 * torch.randn(v.shape, generator=g) for k, v in hf.state_dict().items()}
    hf.load_state_dict(state)
    return hf.to(device), {k: v.to(device) for k, v in state.items()}


@torch.inference_mode()
def hf_greedy(hf, input_ids: torch.Tensor, max_tokens: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy tokens [B, n] and the per-step last-position logits, with HF's own cache."""
    toks, logits_steps, past, x = [], [], None, input_ids
    for _ in range(max_tokens):
        out = hf(x, past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits_steps.append(out.logits[:, -1].float())
        toks.append(out.logits[:, -1].argmax(-1))
        x = toks[-1][:, None]
    return torch.stack(toks, 1), logits_steps


@torch.inference_mode()
def ours_steps(model, input_ids: torch.Tensor, forced: torch.Tensor, cache) -> list[torch.Tensor]:
    """Our last-position logits at each step when fed HF's tokens (teacher forcing: compares logits, not luck)."""
    steps = [model(input_ids, cache=cache)[:, -1].float()]
    for i in range(forced.shape[1] - 1):
        steps.append(model(forced[:, i:i + 1], cache=cache)[:, -1].float())
    return steps


def check_against_hf(preset: str = "deepseek-v3-tiny", batch: int = 2, prompt_len: int = 13, max_tokens: int = 6,
                     seed: int = 0, cfg: ModelConfig | None = None, paged_block_size: int = 5,
                     device: str | None = None) -> dict:
    """Max |logit error| per path and whether greedy generation is token-identical to HF's (fp32; on the GPU when
    there is one, where the paged cache's decode runs the compiled kernel)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    from phase2_mla.paged_latent_cache import PagedLatentCache

    cfg = cfg or get_preset(preset)
    hf, state = make_pair(cfg, seed, device)
    g = torch.Generator().manual_seed(seed + 2)
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt_len), generator=g).to(device)
    with torch.inference_mode():
        ref_prefill = hf(ids).logits.float()
    ref_toks, ref_steps = hf_greedy(hf, ids, max_tokens)
    out = {"preset": preset, "device": device, "logit_scale": ref_prefill.abs().max().item()}
    total = prompt_len + max_tokens
    for form in ("naive", "absorbed"):
        model = DeepseekV3ForCausalLM.from_state_dict(cfg, state, absorbed=form == "absorbed", device=device)
        with torch.inference_mode():
            out[f"prefill_err_{form}"] = max_abs_err(model(ids), ref_prefill)
        caches = {"latent": lambda: LatentCache(cfg, batch, total, device=device)}
        if form == "absorbed":
            caches["paged"] = lambda: PagedLatentCache(cfg, batch, total, block_size=paged_block_size, device=device)
        for cname, make in caches.items():
            steps = ours_steps(model, ids, ref_toks, make())
            out[f"decode_err_{form}_{cname}"] = max(max_abs_err(a, b) for a, b in zip(steps, ref_steps))
            toks = generate_greedy(model, ids, max_tokens, make())
            out[f"greedy_identical_{form}_{cname}"] = bool(torch.equal(toks, ref_toks))
    errs = [v for k, v in out.items() if k.startswith(("prefill_err", "decode_err"))]
    out["max_err"] = max(errs)
    out["all_greedy_identical"] = all(v for k, v in out.items() if k.startswith("greedy_identical"))
    return out
