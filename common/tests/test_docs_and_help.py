"""What a new reader meets first: the READMEs' relative links resolve, and the entry points answer --help.

NOTE: each check is cheap (file reads, argparse, subprocesses that only print help), so it runs in the CPU suite.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READMES = [ROOT / "README.md", *sorted(ROOT.glob("phase*/README.md")), *sorted(ROOT.glob("phase*/[A-Z]*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:  # GitHub's anchor for a heading
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(md: Path) -> list[str]:
    """Relative links of one markdown file whose file (or #anchor in a .md file) does not exist."""
    bad = []
    for target in LINK.findall(md.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = md.parent / path if path else md
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md":
            if anchor not in {_slug(h) for h in re.findall(r"^#+\s+(.*)$", dest.read_text(), re.M)}:
                bad.append(target)
    return bad


@pytest.mark.parametrize("md", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(md):
    assert broken_links(md) == []


def test_the_link_check_finds_a_broken_link(tmp_path):
    (tmp_path / "there.md").write_text("# A heading\n")
    md = tmp_path / "README.md"
    md.write_text("[ok](there.md) [ok](there.md#a-heading) [gone](missing.py) [bad](there.md#nope) [web](https://x)")
    assert broken_links(md) == ["missing.py", "there.md#nope"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_titan_bench_help_lists_the_benchmarks():
    r = _run("common.cli", "bench", "--help")
    assert r.returncode == 0 and "offline" in r.stdout and "serve" in r.stdout and "example" in r.stdout


def test_report_help_and_unknown_phase():
    r = _run("common.report", "--help")
    assert r.returncode == 0 and "--all" in r.stdout
    r = _run("common.report", "phase9_nothing")
    assert r.returncode == 2 and "phase0_tinyllama" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("module", ["phase0_tinyllama.roofline", "phase2_mla.kv_arith", "phase3_paged_fp8.plots",
                                    "phase2_mla.plots"])
def test_scripts_without_options_answer_help_instead_of_running(module):
    r = _run(module, "--help")  # before: each ran (and rewrote its results file)
    assert r.returncode == 0 and r.stdout.startswith("usage:") and "wrote" not in r.stdout


def test_run_script_turns_a_titan_error_into_one_line(capsys):
    from common.cli import run_script
    from common.errors import ModelNotFoundError

    def fails():
        raise ModelNotFoundError("no weights for preset 'x': add --random-weights")

    with pytest.raises(SystemExit) as e:
        run_script(fails, "bench_x")
    err = capsys.readouterr().err
    assert e.value.code == 1 and err == "bench_x: error: no weights for preset 'x': add --random-weights\n"
    for rc, code in ((None, 0), ({"a": 1}, 0), (3, 3)):
        with pytest.raises(SystemExit) as e:
            run_script(lambda: rc, "bench_x")
        assert e.value.code == code


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU message")
def test_a_gpu_only_script_says_so_in_one_line_on_cpu():
    r = _run("phase0_tinyllama.bench_kernels")
    assert r.returncode == 1 and "needs a CUDA GPU" in r.stderr and "Traceback" not in r.stderr


def test_script_help_shows_every_default():
    import argparse

    from common.cli import ScriptHelpFormatter

    ap = argparse.ArgumentParser(description="A.\n\n    python -m x --n 3      # kept as written",
                                 formatter_class=ScriptHelpFormatter)
    ap.add_argument("--n", type=int, default=7)
    ap.add_argument("--rate", default=2.0, help="arrivals per step")
    ap.add_argument("--name", default=None, help="results stem")
    ap.add_argument("--dtype", default="auto", help="default: fp32 on CPU")
    ap.add_argument("--fast", action="store_true")
    text = ap.format_help()
    assert re.search(r"--n N +\(default: 7\)\n", text) and "arrivals per step (default: 2.0)" in text
    assert "python -m x --n 3      # kept as written" in text  # the docstring's layout survives
    assert "results stem\n" in text and "(default: None)" not in text and "(default: False)" not in text
    assert text.count("default") == 3  # --n, --rate and --dtype's own wording, not a second one


GENERATORS = sorted((ROOT / "tools").glob("make_*_notebook.py"))


@pytest.mark.parametrize("script", GENERATORS, ids=lambda p: p.name)
def test_notebook_generators_hold_every_cell(script, monkeypatch):
    """A tools/make_*_notebook.py writes its notebook's cells from scratch: once the notebook was edited and the
    generator was not, running it dropped three sections. Each generator must reproduce the committed cells."""
    import runpy

    import nbformat

    written = {}
    monkeypatch.setattr(nbformat, "write", lambda nb, path: written.update(nb=nb, path=Path(path)))
    runpy.run_path(str(script))
    committed = nbformat.read(written["path"], as_version=4)
    assert [(c.cell_type, c.source) for c in written["nb"].cells] == \
        [(c.cell_type, c.source) for c in committed.cells], f"{script.name} is behind {written['path'].name}"
