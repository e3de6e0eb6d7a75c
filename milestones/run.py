"""Run a gate by name: `python -m milestones.run phase0` / `milestone1`.

Each phase package has a `gate.py` with `TITLE` and `criteria()`; milestones combine criteria across phases in
milestones/<name>.py with the same two names.
"""
from __future__ import annotations

import importlib
import sys

from common.gate import run_gate

PHASE_PACKAGES = {f"phase{i}": name for i, name in enumerate([
    "phase0_tinyllama", "phase1_rust_allocator", "phase2_mla", "phase3_paged_fp8", "phase4_scheduler",
    "phase5_quant", "phase6_moe", "phase7_speculative", "phase8_radix"])}


def gate_module(name: str):
    if name in PHASE_PACKAGES:
        modname = f"{PHASE_PACKAGES[name]}.gate"
    elif name.startswith("milestone"):
        modname = f"milestones.{name}"
    else:
        raise SystemExit(f"unknown gate {name!r}: use phase0..phase8 or milestone1..milestone3")
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name == modname:
            print(f"{name}: not built yet ({modname} does not exist). This gate blocks until its phase is done.")
            raise SystemExit(1)
        raise


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    mod = gate_module(args[0])
    return run_gate(mod.TITLE, mod.criteria())


if __name__ == "__main__":
    sys.exit(main())
