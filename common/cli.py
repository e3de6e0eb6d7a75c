"""`titan`: the command line.

    titan generate --model smollm2-135m --prompt "Once upon a time" --max-tokens 64
    titan chat --model smollm2-135m                # interactive; --prompt for one turn
    titan artifacts                                # the seam's table (the course's table of contents)
    titan serve --model smollm2-135m --port 8000   # OpenAI-compatible HTTP server (phase 4)
    titan bench offline --help                     # phase 4's benchmarks: offline throughput, serving
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

from common.errors import TitanError

EPILOG = """\
--model accepts: a preset (smollm2-135m, tinyllama-1.1b, deepseek-v3-tiny, ...), a .gguf file, a local HF checkpoint directory
(config.json + *.safetensors + tokenizer.json), or an HF repo id found in the local HF cache
(e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0 after `huggingface-cli download`).
"""


def _add_model_group(p: argparse.ArgumentParser, model_help: str = "") -> argparse._ArgumentGroup:
    """--model, --device, --dtype, --random-weights: what every command that loads a model takes."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default="smollm2-135m", help="preset, .gguf, HF dir or cached HF repo id"
                   f"{model_help} (default: %(default)s)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    g.add_argument("--dtype", default="auto",
                   help="auto (fp32 on CPU, bf16 on CUDA) | float32 | bfloat16 | float16 (default: %(default)s)")
    g.add_argument("--random-weights", action="store_true", help="random weights with the preset's shapes")
    g.add_argument("--tokenizer", default=None, help="a directory with tokenizer.json (or a .gguf) to use instead of "
                   "the model's own, e.g. with --random-weights where the model file is absent")
    return g


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = _add_model_group(p)
    g.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible sampling)")
    s = p.add_argument_group("sampling")
    s.add_argument("--max-tokens", type=int, default=128, help="tokens to generate (default: %(default)s)")
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
    s.add_argument("--top-k", type=int, default=0,
                   help="keep the k most likely tokens; 0 disables (default: %(default)s)")
    s.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling mass; 1.0 disables (default: %(default)s)")
    p.add_argument("--stats", action="store_true", help="print tokens/s and timing after the answer")


class ScriptHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help of the phases' scripts: the module docstring keeps its layout (its example commands), and every option
    with a value ends its help with the default, also an option that has no help text."""

    def _format_action(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and action.help is not argparse.SUPPRESS and action.nargs != 0
                and action.default not in (None, argparse.SUPPRESS) and "default" not in text):
            action = copy.copy(action)
            action.help = f"{text} (default: %(default)s)".lstrip()
        return super()._format_action(action)


def run_script(main, prog: str) -> None:
    """The `__main__` of a phase's script: a TitanError (no CUDA, a model not on disk, a bad path) ends it with one
    line that names the fix, as `titan` does, instead of a traceback. An int returned by `main` is the exit code."""
    try:
        rc = main()
    except TitanError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(rc if isinstance(rc, int) else 0)


def _load(args):
    from common.model_loader import load_model

    t0 = time.perf_counter()
    lm = load_model(args.model, device=args.device, dtype=args.dtype, random_weights=args.random_weights,
                    tokenizer=args.tokenizer)
    if lm.tokenizer is None:
        raise TitanError(f"{lm.source} has no tokenizer, so it cannot take text prompts. Use a model that ships "
                         "one (a .gguf, or an HF directory with tokenizer.json).")
    return lm, time.perf_counter() - t0


def _stream_text(lm, ids: list[int], args) -> tuple[list[int], float, float]:
    """Stream decoded text to stdout; returns (tokens, time to first token, total seconds)."""
    import torch

    from common import artifacts
    from common.sampling import SamplingParams

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, stop_token_ids=lm.tokenizer.stop_token_ids())
    stream = artifacts.get("engine.stream")
    out: list[int] = []
    printed = ""
    t0 = time.perf_counter()
    ttft = 0.0
    for tok in stream(lm.model, torch.tensor([ids], device=lm.device), params):
        t = int(tok[0])
        if not out:
            ttft = time.perf_counter() - t0
        if t in params.stop_token_ids:
            break
        out.append(t)
        text = lm.tokenizer.decode(out)
        if not text.endswith("\ufffd"):  # hold back incomplete UTF-8 sequences
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text
    sys.stdout.write("\n")
    return out, ttft, time.perf_counter() - t0


def _print_stats(lm, n_prompt: int, n_out: int, ttft: float, total: float, load_s: float) -> None:
    from common.device import describe

    decode = total - ttft
    rate = (n_out - 1) / decode if n_out > 1 and decode > 0 else float("nan")
    print(f"[titan] {lm.source} on {describe(lm.device)} ({lm.dtype}); load {load_s:.1f} s | prompt {n_prompt} tok, "
          f"prefill+first token {ttft * 1e3:.0f} ms | {n_out} tokens in {total:.2f} s | decode {rate:.1f} tokens/s")


def cmd_generate(args) -> int:
    lm, load_s = _load(args)
    ids = lm.tokenizer.encode(args.prompt, add_special_tokens=True)
    out, ttft, total = _stream_text(lm, ids, args)
    if args.stats:
        _print_stats(lm, len(ids), len(out), ttft, total, load_s)
    return 0


def cmd_chat(args) -> int:
    lm, load_s = _load(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    prompts = [args.prompt] if args.prompt else None
    while True:
        if prompts is not None:
            if not prompts:
                return 0
            user = prompts.pop(0)
            print(f">>> {user}")
        else:
            try:
                user = input(">>> ")
            except EOFError:
                return 0
            if user.strip() in ("/exit", "/quit"):
                return 0
        messages.append({"role": "user", "content": user})
        ids = lm.tokenizer.chat_ids(messages)
        out, ttft, total = _stream_text(lm, ids, args)
        messages.append({"role": "assistant", "content": lm.tokenizer.decode(out)})
        if args.stats:
            _print_stats(lm, len(ids), len(out), ttft, total, load_s)


def cmd_bench(args) -> int:
    """Hand the rest of the command line to phase 4's benchmark scripts (they own their options and --help)."""
    from common import artifacts

    main_fn = artifacts.get("bench.offline" if args.which == "offline" else "bench.serve")
    argv0, sys.argv[0] = sys.argv[0], f"titan bench {args.which}"  # the script's usage line names argv[0]
    try:
        main_fn(args.rest)
    finally:
        sys.argv[0] = argv0
    return 0


def cmd_artifacts(args) -> int:
    from common import artifacts

    print(artifacts.table_of_contents())
    return 0


def cmd_serve(args) -> int:
    from phase4_scheduler.launch import serve

    extra = {"num_layers": args.num_layers} if args.num_layers else {}
    if args.tokenizer:
        extra["tokenizer"] = args.tokenizer
    if args.fuse:
        extra["fuse"] = True
    if args.mixed_graphs != "auto":
        from phase4_scheduler.engine import mixed_graphs_from_text

        extra["mixed_graphs"] = mixed_graphs_from_text(args.mixed_graphs)
    if args.kv_cache_dtype != "auto":
        extra["kv_cache_dtype"] = args.kv_cache_dtype
    extra.update(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens)
    serve(args.model, host=args.host, port=args.port, max_model_len=args.max_model_len, kv_memory=args.kv_memory,
          api_key=args.api_key, device=args.device, log_level=args.log_level, served_model_name=args.served_model_name,
          engine_process=args.engine_process, dtype=None if args.dtype == "auto" else args.dtype,
          random_weights=args.random_weights, **extra)
    return 0


SERVE_EPILOG = EPILOG + """
Then talk to it with any OpenAI client:
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"model": "smollm2-135m", "prompt": "Once upon a time", "max_tokens": 32}'
  python -c "import openai; c = openai.OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='-'); \\
             print(c.chat.completions.create(model='smollm2-135m', messages=[{'role': 'user', 'content': 'Hi'}]))"
Endpoints: /v1/completions, /v1/chat/completions (both stream with "stream": true), /v1/models, /health, /metrics.
Extensions in the request body: top_k, ignore_eos, stop_token_ids.
"""


GENERATE_EPILOG = """\
example:
  titan generate --prompt "Once upon a time" --max-tokens 64 --stats

""" + EPILOG
CHAT_EPILOG = """\
examples:
  titan chat --prompt "What is the capital of France?" --stats    # one turn
  titan chat --temperature 0.7 --seed 0                            # interactive (/exit to quit)

""" + EPILOG
BENCH_EPILOG = """\
examples:
  titan bench offline --help
  titan bench offline --model smollm2-135m --random-weights --num-layers 2 --num-prompts 16 --output-len 16
  titan bench serve --launch --model smollm2-135m --random-weights --num-layers 2 --num-prompts 20 --request-rate inf
Each writes a JSON under phase4_scheduler/results/ (name it with --name).
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="titan", description="TitanInfer: an LLM inference engine built phase by phase.",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    g = sub.add_parser("generate", help="complete a raw text prompt", epilog=GENERATE_EPILOG,
                       description="Continue a raw text prompt (no chat template) and print the continuation.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--prompt", required=True, help="the text to continue")
    _add_model_args(g)
    g.set_defaults(func=cmd_generate)
    c = sub.add_parser("chat", help="chat with the model (interactive, or one turn with --prompt)",
                       epilog=CHAT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Chat through the model's chat template: one turn with --prompt, else interactive.")
    c.add_argument("--prompt", help="one user message; without it, an interactive session (/exit to quit)")
    c.add_argument("--system", default=None, help="system message (default: the chat template's own)")
    _add_model_args(c)
    c.set_defaults(func=cmd_chat)
    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server (completions, chat, SSE streaming, /metrics)",
                        epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = _add_model_group(sv, "; clients send this name as `model`")
    m.add_argument("--num-layers", type=int, default=None, help=argparse.SUPPRESS)  # quick CPU experiments
    m.add_argument("--served-model-name", default=None, help="the name clients send as `model` (default: --model)")
    e = sv.add_argument_group("engine")
    e.add_argument("--max-model-len", type=int, default=None,
                   help="context window in tokens, prompt + output (default: the model's)")
    e.add_argument("--kv-memory", default=None,
                   help="KV-cache memory: '512MiB', '4GiB', bytes, or a fraction of free GPU memory such as 0.9 "
                        "(default: 256MiB on CPU, 0.5 on CUDA)")
    e.add_argument("--max-num-seqs", type=int, default=64, help="seats in the running batch (default: %(default)s)")
    e.add_argument("--max-num-batched-tokens", type=int, default=512,
                   help="token budget of one step: decodes + prefill chunks (default: %(default)s)")
    e.add_argument("--fuse", action="store_true", help="CUDA: the fused-kernel model (phase4_scheduler/FUSED.md)")
    e.add_argument("--mixed-graphs", choices=["auto", "full", "piecewise", "off"], default="auto",
                   help="CUDA graphs for steps that carry a prefill (phase4_scheduler/mixed_graphs.py): full (one "
                        "graph per token bucket, attention inside) or piecewise (cut at the attentions, which run "
                        "eagerly). Built only with CUDA graphs and --fuse. auto: full, or what TITAN_MIXED_GRAPHS "
                        "says (full / piecewise / 0) (default: %(default)s)")
    e.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto",
                   help="KV pool: the model's dtype, or FP8 (e4m3 + a scale per token and KV head: ~2x the tokens "
                        "in the same --kv-memory) (default: %(default)s)")
    e.add_argument("--engine-process", choices=["auto", "on", "off"], default="auto",
                   help="run the engine in its own process (as vLLM V1's engine core), so that the HTTP/SSE work of "
                        "hundreds of streams does not compete with the step loop for one Python GIL; outputs cross a "
                        "pipe once per step. auto: on with CUDA, off on CPU (default: %(default)s)")
    h = sv.add_argument_group("http")
    h.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the server to the network, "
                   "so set --api-key then (default: %(default)s)")
    h.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    h.add_argument("--api-key", default=os.environ.get("TITAN_API_KEY") or None,
                   help="require `Authorization: Bearer KEY` on /v1/* (default: $TITAN_API_KEY, else no key)")
    h.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default: %(default)s)")
    sv.set_defaults(func=cmd_serve)
    b = sub.add_parser("bench", help="benchmarks: `titan bench offline ...` or `titan bench serve ...` (--help on each)",
                       add_help=False, epilog=BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Phase 4's benchmark scripts (phase4_scheduler/bench_offline.py, bench_serve.py); "
                                   "everything after the benchmark's name is its own options.")
    # NOTE: add_help=False so that `titan bench offline --help` reaches the script; `titan bench --help` (the option
    # before any name) is still this parser's.
    b.add_argument("-h", "--help", action="help", help="show this help message and exit")
    b.add_argument("which", choices=["offline", "serve"], metavar="{offline,serve}", help="offline: LLM.generate throughput (vs static "
                   "batching); serve: ShareGPT + Poisson arrivals against an OpenAI-compatible server")
    b.add_argument("rest", nargs=argparse.REMAINDER, metavar="OPTIONS", help="the benchmark's own options")
    b.set_defaults(func=cmd_bench)
    a = sub.add_parser("artifacts", help="print the seam's table: every phase's deliverables and where they live")
    a.set_defaults(func=cmd_artifacts)
    return ap


def _check_sampling_args(ap, args) -> None:
    """generate / chat: the sampling flags are checked by SamplingParams' own rules before the model loads, and a
    bad one is a usage error (exit 2), not a traceback after the load."""
    if not hasattr(args, "max_tokens") or not hasattr(args, "temperature"):
        return
    from common.sampling import SamplingParams

    try:
        SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       seed=args.seed)
    except (ValueError, TypeError) as e:
        ap.error(str(e).replace("max_tokens", "--max-tokens").replace("temperature", "--temperature")
                 .replace("top_k", "--top-k").replace("top_p", "--top-p"))


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "command", None):
        ap.print_help()
        return 2
    _check_sampling_args(ap, args)
    try:
        return args.func(args)
    except TitanError as e:
        print(f"titan: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
