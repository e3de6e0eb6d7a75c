# TitanInfer. Two commands on a fresh machine: `make demo` and `make test` (both set up first if needed).
SHELL := /bin/bash
PY := .venv/bin/python
export PYTHONPATH := $(CURDIR)
export PATH := $(HOME)/.cargo/bin:$(PATH)
NOTEBOOKS := $(shell ls phase*/*.ipynb 2>/dev/null)
PHASES := 0 1 2 3 4 5 6 7 8

.PHONY: help setup demo test test-cpu test-nb test-gpu lab serve bench report clean \
        $(addprefix phase,$(PHASES)) milestone1 milestone2 milestone3

help:  ## list the targets
	@{ grep -E '^[a-z0-9 -]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'; \
	  printf '%s\t%s\n' "phase0..phase4" "a phase's gate: its acceptance criteria live (GPU ones skipped on CPU); exit 1 on a failure" \
	    "milestone1" "the MLA milestone gate (phase 2's MLA against HF and GQA-8)" \
	    "phase5..phase8" "not built yet (as milestone2, milestone3): the gate says so and exits 1"; } | column -t -s $$'\t'

setup:  ## create .venv, install the pinned stack and fetch the model + data (fast no-op when done)
	@bash tools/setup.sh

demo: setup  ## answer a chat prompt with SmolLM2-135M through TitanInfer and print tokens/s
	$(PY) -m common.cli chat --model smollm2-135m --prompt "What is the capital of France?" --max-tokens 48 --stats

test: setup  ## the CPU suite (pytest + cargo test) and nbval on every notebook
	$(MAKE) --no-print-directory test-cpu test-nb

test-cpu:  ## the CPU suite only (cargo test + pytest -m 'not gpu')
	@if [ -f phase1_rust_allocator/Cargo.toml ]; then cd phase1_rust_allocator && cargo test --offline -q; fi
	$(PY) -m pytest -q -m "not gpu" -p no:cacheprovider

test-nb:  ## nbval on every notebook only
	$(PY) -m pytest -q --nbval-lax -p no:cacheprovider $(NOTEBOOKS)

test-gpu:  ## the GPU suite (run on the GPU machine)
	python3 -m pytest -q -m gpu -p no:cacheprovider

lab: setup  ## JupyterLab on the notebooks
	.venv/bin/jupyter lab --notebook-dir=$(CURDIR)

serve: setup  ## titan serve: the OpenAI-compatible server (phase 4), SmolLM2-135M on http://127.0.0.1:8000
	$(PY) -m common.cli serve --model smollm2-135m

bench: setup  ## CPU benchmarks: phase 0's KV cache (~5 min) and phase 1's allocator (others: each phase README)
	$(PY) -m phase0_tinyllama.bench_kvcache --device cpu
	$(PY) -m phase1_rust_allocator.bench_allocator

report: setup  ## regenerate every phase's REPORT.md from its results/*.json
	$(PY) -m common.report --all

$(addprefix phase,$(PHASES)): setup
	$(PY) -m milestones.run $@

milestone1 milestone2 milestone3: setup
	$(PY) -m milestones.run $@

clean:  ## remove pytest caches, build/ and __pycache__
	rm -rf .pytest_cache build */__pycache__
