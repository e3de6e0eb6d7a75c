"""lm-eval against `titan serve`: the harness's loglikelihood requests, checked against a plain forward.

    titan serve --model smollm2-135m --device cpu --port 8021 &
    python -m phase4_scheduler.lm_eval_check --base-url http://127.0.0.1:8021 --lm-eval-path /tmp/lmsite

EleutherAI's lm-evaluation-harness scores multiple-choice tasks through `local-completions` with one request per
(context, choice): token ids, `echo: true`, `max_tokens: 1`, `logprobs: 1`, and reads the choice's log-likelihood
as the sum of `token_logprobs` past the context, plus "greedy" from `top_logprobs`. This tool runs lm-eval on a
small built-in multiple-choice task (written to a temporary folder: no dataset download) against a running server,
then recomputes every request's log-likelihood and greedy flag with the reference model's own forward (same weights,
loaded here) and writes the largest difference to results/lm_eval_check_<device>.json.

lm-eval is not a dependency of this project (its pins clash with ours): install it anywhere and point
`--lm-eval-path` at it (e.g. `pip install --target /tmp/lmsite lm_eval==0.4.13 datasets evaluate sqlitedict
pytablewriter sacrebleu rouge_score scikit-learn jsonlines word2number more_itertools tqdm-multiprocess peft
accelerate --no-deps` plus their small dependencies); the path is appended to sys.path, so this project's
transformers stays the one imported. Without lm-eval the tool says so and exits 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

TASK = "titan_toy_mc"
QUESTIONS = [  # (question, choices, index of the right one)
    ("The capital of France is", [" Paris", " London", " Berlin", " Madrid"], 0),
    ("Two plus two equals", [" four", " five", " seven", " ten"], 0),
    ("The sun rises in the", [" west", " east", " north", " south"], 1),
    ("Water freezes at zero degrees", [" Fahrenheit", " Kelvin", " Celsius", " Rankine"], 2),
    ("A baby cat is called a", [" puppy", " calf", " foal", " kitten"], 3),
    ("The opposite of hot is", [" cold", " warm", " big", " fast"], 0),
    ("Bees make", [" milk", " honey", " silk", " wool"], 1),
    ("The largest planet in our solar system is", [" Mars", " Venus", " Jupiter", " Earth"], 2),
]


def write_task(folder: Path) -> None:
    """The multiple-choice task as lm-eval's YAML over a local JSON-lines file."""
    data = folder / "toy.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "label": y}) + "\n" for q, c, y in QUESTIONS))
    (folder / "toy.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: \"{{question}}\"\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: \"{{label}}\"\nmetric_list:\n  - metric: acc\n    aggregation: mean\n"
        "    higher_is_better: true\n")


def run_lm_eval(base_url: str, model: str, tokenizer_dir: str, folder: Path) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model="local-completions",
        model_args=f"model={model},base_url={base_url.rstrip('/')}/v1/completions,tokenizer_backend=huggingface,"
                   f"tokenizer={tokenizer_dir},num_concurrent=1,max_retries=1,tokenized_requests=True",
        tasks=[TASK], task_manager=TaskManager(include_path=str(folder)), log_samples=True)


def reference_scores(lm, hf_tok, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
    """(log-likelihood of the continuation, whether it is the greedy one) from one plain forward each, tokenized as
    lm-eval does (context + continuation encoded whole, the context's tokens split off)."""
    import torch

    out = []
    for ctx, cont in pairs:
        whole = hf_tok.encode(ctx + cont, add_special_tokens=False)
        n = len(hf_tok.encode(ctx, add_special_tokens=False))
        with torch.no_grad():
            lp = torch.log_softmax(lm.model(torch.tensor([whole], device=lm.device))[0].float(), -1)
        cont_ids = whole[n:]
        out.append((sum(lp[n - 1 + j, t].item() for j, t in enumerate(cont_ids)),
                    all(int(lp[n - 1 + j].argmax()) == t for j, t in enumerate(cont_ids))))
    return out


def main(argv: list[str] | None = None) -> int:
    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    ap.add_argument("--base-url", required=True, help="the running server, e.g. http://127.0.0.1:8021")
    ap.add_argument("--model", default="smollm2-135m", help="what the server serves and the reference loads")
    ap.add_argument("--device", default="cpu", help="where the reference forward runs (default: %(default)s)")
    ap.add_argument("--lm-eval-path", default=None, help="a folder with lm_eval installed (appended to sys.path)")
    ap.add_argument("--name", default=None, help="results/<name>.json (default: lm_eval_check_<device>)")
    args = ap.parse_args(argv)
    if args.lm_eval_path:
        sys.path.append(args.lm_eval_path)
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        print(f"lm_eval is not importable ({e}): install it and pass --lm-eval-path (see --help)")
        return 2
    from transformers import AutoTokenizer

    from common.bench import write_result
    from common.model_loader import load_model

    lm = load_model(args.model, device=args.device)
    tok_dir = lm.tokenizer.hf.name_or_path
    with tempfile.TemporaryDirectory() as d:
        write_task(Path(d))
        res = run_lm_eval(args.base_url, args.model, tok_dir, Path(d))
    samples = res["samples"][TASK]
    pairs = [tuple(a) for s in samples for a in s["arguments"]]
    served = [(float(r[0][0]), bool(r[0][1])) for s in samples for r in s["resps"]]
    ref = reference_scores(lm, AutoTokenizer.from_pretrained(tok_dir), pairs)
    diffs = [abs(a[0] - b[0]) for a, b in zip(served, ref)]
    worst = max(diffs) if all(d == d for d in diffs) else float("inf")  # max() would drop a NaN (a NaN != itself)
    flags = sum(a[1] == b[1] for a, b in zip(served, ref))
    acc = res["results"][TASK]["acc,none"]
    print(f"lm-eval {lm_eval.__version__} via {args.base_url}: {len(pairs)} loglikelihood requests, accuracy {acc:.3f};"
          f" max |served - reference forward| = {worst:.2e}; greedy flags equal {flags}/{len(pairs)}")
    write_result("phase4_scheduler", args.name or f"lm_eval_check_{args.device}",
                 {"lm_eval_version": lm_eval.__version__, "model": lm.source, "dtype": str(lm.dtype),
                  "requests": len(pairs), "accuracy": acc, "max_abs_loglikelihood_diff": worst,
                  "greedy_flags_equal": flags, "rows": [{"context": c, "continuation": k, "served": s, "reference": r}
                                                         for (c, k), s, r in zip(pairs, served, ref)]})
    return 0 if worst < 1e-3 and flags == len(pairs) else 1


if __name__ == "__main__":
    sys.exit(main())
