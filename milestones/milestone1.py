"""`make milestone1` (MLA capability): the learner's engine has DeepSeek's multi-head latent attention.

1. the full MLA forward is correct (naive and absorbed forms = HF DeepseekV3ForCausalLM: prefill and decode logits,
   greedy generation token-identical, including the paged cache whose decode runs the Triton kernel);
2. the KV cache is at least 50% smaller than GQA's at equal model width (arithmetic AND allocated bytes);
3. MLA decode is not slower than GQA decode at the same batch, context and query heads (GPU; skipped on CPU);
4. the chapter answers "what is the essential difference between MLA and GQA?".
Everything is reached through the seam (common.artifacts), so it judges whatever implementation is plugged in.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

if not torch.cuda.is_available():  # Triton kernels run under the CPU interpreter (set before they are imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from common import artifacts  # noqa: E402
from common.bench import REPO_ROOT  # noqa: E402
from common.config import get_preset  # noqa: E402
from common.gate import Criterion, Outcome, passed  # noqa: E402

TITLE = "Milestone 1: MLA capability"
CHAPTER = REPO_ROOT / "phase2_mla" / "README.md"
QUESTION = re.compile(r"essential difference between MLA and GQA", re.I)
MIN_WORDS = 150
# An answer must name the mechanism, not only the outcome: what is cached, that it is shared, the absorption trick,
# and the comparison with GQA's per-group K/V heads.
REQUIRED_TERMS = {"latent": r"latent", "absorption": r"absorb", "GQA": r"\bGQA\b", "KV heads/groups": r"group|KV head",
                  "cache": r"cache", "low-rank/compression": r"low-rank|compress|down-project"}


def full_mla_forward() -> Outcome:
    r = artifacts.get("mla.check_vs_hf")(batch=2, prompt_len=9, max_tokens=5)
    ok = r["max_err"] < 1e-4 and r["all_greedy_identical"]
    return passed(f"max logit err {r['max_err']:.1e} ({r['device']}); greedy identical: {r['all_greedy_identical']}",
                  ok)


def kv_cache_smaller() -> Outcome:
    t = artifacts.get("mla.kv_table")(get_preset("deepseek-v3"), gqa_groups=8)
    alloc_ok = all(r["allocated_bytes_per_token_layer"] == r["bytes_per_token_layer"] for r in t["rows"].values())
    mla, gqa = t["rows"]["MLA"], t["rows"]["GQA-8"]
    return passed(f"{mla['bytes_per_token_layer']} vs {gqa['bytes_per_token_layer']} B/token/layer: "
                  f"{t['reduction_vs_gqa']:.1%} smaller", t["reduction_vs_gqa"] >= 0.5 and alloc_ok,
                  "" if alloc_ok else "allocated bytes disagree with the arithmetic")


def mla_decode_not_slower() -> Outcome:
    from phase2_mla.gate import check_mla_vs_gqa

    return check_mla_vs_gqa()


def _recorded_decode() -> str | None:
    """phase 2's recorded MLA/GQA figure (both device calls named) and whether it meets "not slower"."""
    from common.bench import load_result
    from phase2_mla.gate import recorded_mla_vs_gqa

    r = load_result("phase2_mla", "bench_mla")
    try:
        ok = r["summary"]["mla_over_gqa_time"] <= 1.0
        return (f"{recorded_mla_vs_gqa(r)} on {r['provenance']['device']}, {r['provenance']['date'][:10]}"
                f" — {'meets' if ok else 'MISSES'} the threshold")
    except (TypeError, KeyError):
        return None


def chapter_section(text: str) -> str | None:
    """The body of the markdown section whose heading asks the question (up to the next heading of its level)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(#{1,6})\s+(.*)", line)
        if m and QUESTION.search(m.group(2)):
            level, body = len(m.group(1)), []
            for nxt in lines[i + 1:]:
                h = re.match(r"^(#{1,6})\s", nxt)
                if h and len(h.group(1)) <= level:
                    break
                body.append(nxt)
            return "\n".join(body)
    return None


def chapter_answers(path: Path = CHAPTER) -> Outcome:
    if not Path(path).exists():
        return passed("no chapter", False, f"{path} does not exist")
    body = chapter_section(Path(path).read_text())
    if body is None:
        return passed("no section", False, "no heading asks 'What is the essential difference between MLA and GQA?'")
    words = len(re.findall(r"[A-Za-z0-9]+", body))
    missing = [name for name, pat in REQUIRED_TERMS.items() if not re.search(pat, body, re.I)]
    numbers = bool(re.search(r"\d", body))
    ok = words >= MIN_WORDS and not missing and numbers
    why = "; ".join(filter(None, [f"only {words} words (< {MIN_WORDS})" if words < MIN_WORDS else "",
                                  f"missing: {', '.join(missing)}" if missing else "",
                                  "" if numbers else "no figures"]))
    return passed(f"{words} words, all key terms" if not missing else f"{words} words", ok, why)


def criteria():
    yield Criterion("full MLA forward correct (vs HF, naive + absorbed + paged)", "err < 1e-4, greedy identical",
                    full_mla_forward)
    yield Criterion("KV cache vs GQA-8 at DeepSeek-V3 width", ">= 50% smaller", kv_cache_smaller)
    yield Criterion("MLA decode vs GQA decode (B=64, ctx 4K, 128 q heads)", "not slower", mla_decode_not_slower,
                    needs_cuda=True, recorded=_recorded_decode)
    yield Criterion("chapter answers 'essential difference between MLA and GQA?'",
                    f">= {MIN_WORDS} words + key terms", chapter_answers)
