"""Inference v0: the simplest engine that works. No KV cache: every step runs the WHOLE sequence again.

Step t costs a forward pass over prompt_len + t tokens, so generating n tokens costs O(n^2) token-passes. That is
the problem the KV cache (inference_v1.py) solves. The model itself is the reference Llama in common/llama.py.

    python -m phase0_tinyllama.inference_v0 --prompt "What is the capital of France?"
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import torch

from common.sampling import SamplingParams, check_prompt_fits, make_generator, sample


@torch.inference_mode()
def stream_no_cache(model, input_ids: torch.Tensor, params: SamplingParams) -> Iterator[torch.Tensor]:
    """Yield one token per sequence per step ([B]); input_ids: [B, S]. Callers decide when to stop."""
    check_prompt_fits(input_ids.shape[1], params.max_tokens, model.config.max_position_embeddings)
    gen = make_generator(params, input_ids.device)
    seq = input_ids
    for _ in range(params.max_tokens):
        logits = model(seq, last_only=True)[:, -1]  # [B, V]: recomputes all keys and values every step
        tok = sample(logits, params, gen)
        yield tok
        seq = torch.cat([seq, tok[:, None]], dim=1)


def generate(model, input_ids: torch.Tensor, params: SamplingParams, stream=stream_no_cache) -> torch.Tensor:
    """Generated ids [B, n], stopping when every sequence has produced a stop token (unless ignore_eos)."""
    stops = torch.tensor(params.stop_token_ids or model.config.eos_token_ids or [-1], device=input_ids.device)
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    out = []
    for tok in stream(model, input_ids, params):
        out.append(tok)
        done |= torch.isin(tok, stops)
        if done.all() and not params.ignore_eos:
            break
    return torch.stack(out, dim=1)


def main(argv=None, stream=stream_no_cache, name="v0 (no KV cache)") -> None:
    from common.cli import ScriptHelpFormatter
    from common.model_loader import load_model

    module = "inference_v0" if stream is stream_no_cache else "inference_v1"
    ap = argparse.ArgumentParser(description=f"Generate with the phase-0 engine {name}.",
                                 formatter_class=ScriptHelpFormatter,
                                 epilog=f"example: python -m phase0_tinyllama.{module} --prompt 'Why is the sky blue?'")
    ap.add_argument("--model", default="smollm2-135m", help="preset, .gguf file or HF directory")
    ap.add_argument("--prompt", default="What is the capital of France?", help="a chat message")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens to generate")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    args = ap.parse_args(argv)
    lm = load_model(args.model, device=args.device)
    ids = torch.tensor([lm.tokenizer.chat_ids(args.prompt)], device=lm.device)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, stop_token_ids=lm.tokenizer.stop_token_ids())
    t0 = time.perf_counter()
    out = generate(lm.model, ids, params, stream=stream)[0].tolist()
    dt = time.perf_counter() - t0
    print(lm.tokenizer.decode(out))
    print(f"[{name}] {len(out)} tokens in {dt:.2f} s = {len(out) / dt:.1f} tok/s")


if __name__ == "__main__":
    from common.cli import run_script

    run_script(main, "inference_v0")
