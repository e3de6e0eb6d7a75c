"""Generate a phase's REPORT.md from its report_template.md and results/*.json.

The template is Jinja2. It sees `results` (a dict: file stem -> parsed JSON, each with its `provenance`),
`fmt(x, digits)` and `pct(x)`. A figure absent from results/ renders as "not measured yet", never as a number.

    python -m common.report phase0_tinyllama      # one phase
    python -m common.report --all                 # every phase that has a template
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import jinja2

REPO_ROOT = Path(__file__).resolve().parent.parent


class _Missing(jinja2.ChainableUndefined):
    def __str__(self) -> str:
        return "*not measured yet*"

    def __format__(self, spec: str) -> str:
        return str(self)


def fmt(x, digits: int = 2) -> str:
    if isinstance(x, jinja2.Undefined) or x is None:
        return "*not measured yet*"
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def pct(x, digits: int = 1) -> str:
    return fmt(x * 100 if isinstance(x, (int, float)) else x, digits) + ("%" if isinstance(x, (int, float)) else "")


def load_results(phase_dir: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted((phase_dir / "results").glob("*.json"))}


def render(phase: str) -> str:
    phase_dir = REPO_ROOT / phase
    env = jinja2.Environment(undefined=_Missing, keep_trailing_newline=True)
    env.globals.update(fmt=fmt, pct=pct)
    template = env.from_string((phase_dir / "report_template.md").read_text())
    return template.render(results=load_results(phase_dir))


def write(phase: str) -> Path:
    out = REPO_ROOT / phase / "REPORT.md"
    out.write_text(render(phase))
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    known = sorted(p.parent.name for p in REPO_ROOT.glob("phase*/report_template.md"))
    if args in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    phases = known if args == ["--all"] else [a.rstrip("/") for a in args]
    if not phases:
        print(__doc__)
        return 1
    unknown = [ph for ph in phases if ph not in known]
    if unknown:
        print(f"common.report: no report template for {', '.join(unknown)}; phases with one: {', '.join(known)} "
              "(or --all)", file=sys.stderr)
        return 2
    for ph in phases:
        write(ph)
    return 0


if __name__ == "__main__":
    sys.exit(main())
