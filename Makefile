# The two commands of the README: `make demo` (a whole local network) and `make test`.
# Each sets up what is missing (.venv, node_modules, the solc bridge) and nothing more.
SHELL := /bin/bash
SOLC_VERSION := 0.8.28
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-long demo bench lint lock clean

setup: $(VENV)/.installed node_modules/.installed
	@tools/install-solc.sh $(SOLC_VERSION)

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -r requirements.lock
	$(PY) -m pip install -q --no-compile --no-deps -e .
	$(PY) -m compileall -qq -j 0 $(VENV)/lib || true  # byte-compile on every core (pip does it on one)
	touch $@

node_modules/.installed: package.json package-lock.json
	npm install --no-audit --no-fund --no-save
	touch $@

# Slither first (no high or medium finding in our contracts), then every test on Anvil.
# TEST_JOBS pytest-xdist workers, each with its own Anvil; a test module stays on one worker
# (its module fixtures: a deployed network, relay and node processes). TEST_JOBS=0: one process.
TEST_JOBS ?= 2
XDIST := $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder)

test: setup lint
	ape compile
	ape test tests/ $(XDIST) $(ARGS)

test-long: setup lint
	ape compile
	HYPOTHESIS_PROFILE=long ape test tests/ $(XDIST) $(ARGS)

lint: setup
	$(PY) scripts/slither_check.py

demo: setup
	ape run demo

# Every benchmark script, then one table of all their numbers (bench/*.json).
bench: setup
	ape run bench_registry
	ape run bench_gas
	ape run bench_emission
	$(PY) scripts/bench_node.py
	ape run bench_relay
	ape run bench_e2e
	$(PY) scripts/bench_summary.py

lock:
	$(PY) -m pip freeze --exclude-editable | sed '1i # Exact set installed by make (pip install -r requirements.lock). Regenerate: make lock' > requirements.lock

clean:
	rm -rf .build $(VENV) node_modules demo-output
