"""The correctness oracle: HF transformers on the same weights, and greedy decoding on both sides."""
from __future__ import annotations

import torch

CHAT_PROMPTS = ["What is the capital of France?",
                "Write a haiku about the sea.",
                "Explain in two sentences why the sky is blue."]


def load_hf_smollm2():
    """HF transformers' LlamaForCausalLM from the same SmolLM2 GGUF, dequantised to fp32."""
    from transformers import AutoModelForCausalLM

    from common import assets

    p = assets.require("smollm2-gguf")
    return AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32).eval()


def hf_greedy(hf, ids: torch.Tensor, n: int) -> list[int]:
    """HF's own greedy generate, told not to stop at EOS (we compare n tokens, EOS or not)."""
    from transformers import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    saved, hf.generation_config.eos_token_id = hf.generation_config.eos_token_id, None
    try:
        with torch.no_grad():
            out = hf.generate(ids, generation_config=cfg)[0, ids.shape[1]:].tolist()
    finally:
        hf.generation_config.eos_token_id = saved
    if len(out) != n:
        raise RuntimeError(f"HF generated {len(out)} tokens, expected {n}")
    return out


def ours_greedy(model, ids: torch.Tensor, n: int) -> list[int]:
    """Our engine (the seam's "engine.generate"), greedy, n tokens."""
    from common import artifacts
    from common.sampling import SamplingParams

    generate = artifacts.get("engine.generate")
    return generate(model, ids, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))[0].tolist()
