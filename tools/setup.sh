#!/usr/bin/env bash
# make setup: create .venv, install the pinned stack (CPU torch from local disk), fetch the model and data assets,
# build the phase-1 Rust extension. Re-running it when nothing changed is a fast no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
stamp_src=$(cat pyproject.toml requirements.txt constraints.txt tools/setup.sh tools/build_rust.sh $(ls phase1_rust_allocator/Cargo.toml phase1_rust_allocator/Cargo.lock phase1_rust_allocator/.cargo/config.toml phase1_rust_allocator/src/*.rs 2>/dev/null) | sha256sum | cut -c1-16)
STAMP="$VENV/.titan-setup-$stamp_src"

if [ -f "$STAMP" ] && "$VENV/bin/python" -m common.assets check >/dev/null 2>&1; then
  echo "setup: up to date (.venv and assets present)"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PY --version)"
  $PY -m venv "$VENV"
fi
echo "setup: installing torch==2.13.0 (CPU build) and the pinned dependencies"
$PIP install -c constraints.txt "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
$PIP install -c constraints.txt -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
$PIP install -c constraints.txt --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import torch, triton, transformers, gguf; assert not torch.version.cuda or True; print('setup: torch', torch.__version__, '| triton', triton.__version__, '| transformers', transformers.__version__)"

echo "setup: fetching assets (SmolLM2-135M-Instruct GGUF, ShareGPT V3)"
"$VENV/bin/python" -m common.assets fetch

if [ -f phase1_rust_allocator/Cargo.toml ]; then
  echo "setup: building the phase-1 Rust extension (offline, Debian's PyO3)"
  bash tools/build_rust.sh
fi
rm -f "$VENV"/.titan-setup-*
touch "$STAMP"
echo "setup: done"
