#!/usr/bin/env bash
# Build the phase-1 Rust extension (crate kv_cache_manager) offline and install it into .venv.
#  1. Debian's librust-pyo3-dev provides PyO3 0.17.3 + dependencies under /usr/share/cargo/registry
#     (phase1_rust_allocator/.cargo/config.toml points crates-io there; crates.io is unreachable).
#  2. maturin builds one abi3 wheel (CPython >= 3.8, so the GPU machine's 3.12 imports it too) into
#     phase1_rust_allocator/target/wheels/ (git-ignored).
#  3. pip installs that wheel into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
CRATE=phase1_rust_allocator
VENV=${VENV:-.venv}

command -v cargo >/dev/null || { [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"; }
PKGS=""
[ -d /usr/share/cargo/registry/pyo3-0.17.3 ] || PKGS="librust-pyo3-dev"
command -v cargo >/dev/null || PKGS="$PKGS cargo"  # Debian's Rust 1.63 builds this crate too
if [ -n "$PKGS" ]; then
  echo "build_rust: installing Debian's$PKGS (PyO3 0.17.3 as an offline crate registry)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $PKGS >/dev/null
fi
[ -x "$VENV/bin/maturin" ] || { echo "build_rust: $VENV/bin/maturin missing; run make setup (maturin is in requirements.txt)" >&2; exit 1; }

rm -f "$CRATE"/target/wheels/kv_cache_manager-*.whl
( cd "$CRATE" && "../$VENV/bin/maturin" build --release --offline -q -b pyo3 --features extension-module \
    --interpreter "../$VENV/bin/python" --out target/wheels )
WHEEL=$(ls "$CRATE"/target/wheels/kv_cache_manager-*-abi3-*.whl)
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --force-reinstall --no-deps "$WHEEL"
"$VENV/bin/python" -c "import kv_cache_manager as k; print('build_rust: kv_cache_manager', k.__version__, 'from', k.__file__)"
echo "build_rust: wheel $WHEEL"
