"""milestone1's criteria: they pass on the real work, and each one can fail."""
import pytest

from common.gate import Criterion, run_gate
from milestones import milestone1 as m1

GOOD = """# Chapter
## What is the essential difference between MLA and GQA?
GQA shrinks the KV cache by letting a group of query heads share one KV head: fewer K/V heads, each still a full
head_dim vector per token. MLA instead caches one low-rank latent vector per token (512 numbers) plus a 64-wide
rope key, shared by all 128 heads; every head's key and value are linear images of that latent. Because the
up-projection is linear, it can be absorbed into the query and the output projection, so decode attends in latent
space directly and never rebuilds per-head keys. """ + "More words to reach the bar. " * 25 + """
## Next section
"""


def test_chapter_check_passes_on_a_real_answer(tmp_path):
    p = tmp_path / "README.md"
    p.write_text(GOOD)
    assert m1.chapter_answers(p).passed


@pytest.mark.parametrize("text, why", [
    ("# Chapter\nNothing here.\n", "no heading"),
    ("## What is the essential difference between MLA and GQA?\nMLA caches a latent.\n", "words"),
    (GOOD.replace("absorbed", "folded"), "absorption"),
    (GOOD.replace("latent", "thing"), "latent"),
])
def test_chapter_check_fails_without_a_real_answer(tmp_path, text, why):
    p = tmp_path / "README.md"
    p.write_text(text)
    out = m1.chapter_answers(p)
    assert out.passed is False and why in out.reason


def test_chapter_check_on_a_missing_file(tmp_path):
    assert m1.chapter_answers(tmp_path / "nope.md").passed is False


def test_section_stops_at_the_next_heading():
    body = m1.chapter_section(GOOD)
    assert "Next section" not in body and "low-rank latent" in body


def test_the_real_chapter_answers_the_question():
    out = m1.chapter_answers()
    assert out.passed, out.reason


def test_kv_criterion_passes_and_reports_the_reduction():
    out = m1.kv_cache_smaller()
    assert out.passed and "71.9% smaller" in out.measured


def test_kv_criterion_fails_when_mla_is_not_smaller(monkeypatch):
    real = m1.artifacts.get("mla.kv_table")

    def fat_latent(cfg, gqa_groups=8):
        return real(cfg.replace(kv_lora_rank=4096), gqa_groups)  # a "latent" bigger than GQA-8's K+V
    monkeypatch.setattr(m1.artifacts, "get", lambda name: fat_latent if name == "mla.kv_table" else real)
    assert m1.kv_cache_smaller().passed is False


def test_gpu_criterion_is_skipped_not_passed_on_cpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    from common.gate import evaluate
    crit = [c for c in m1.criteria() if c.needs_cuda]
    assert crit and all(evaluate(c)[0].passed is None for c in crit)


def test_gate_exits_nonzero_when_a_criterion_fails(tmp_path, capsys):
    bad = tmp_path / "README.md"
    bad.write_text("# nothing\n")
    code = run_gate("m1", [Criterion("chapter", "-", lambda: m1.chapter_answers(bad))])
    assert code == 1 and "FAIL" in capsys.readouterr().out


def test_full_forward_criterion_passes():
    out = m1.full_mla_forward()
    assert out.passed, out
