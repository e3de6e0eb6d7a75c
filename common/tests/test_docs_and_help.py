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
