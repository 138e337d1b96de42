# DealFlow developer commands (docs/architecture.md §3.1). From a fresh clone only python3 (>= 3.11)
# is needed: every target that runs project code first builds .venv.
#
#   make demo    venv + stack up + sample deals through every stage (stack left up)
#   make test    venv + the whole test suite (does not need, use or touch the stack)
#   make up / down / status    the embedded stack in the background (.data/pids, .data/logs)
#   make lint    ruff check, ruff format --check, mypy
#   make chaos / bench         fault suite / benchmarks
#   make clean   stop the stack, then delete .data (all local deals!)

PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
# Written after a successful install; older than pyproject.toml => reinstall.
STAMP := $(VENV)/.installed
LINT_PATHS := dealflow workflows activities sim bench worker.py starter.py tests

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

.PHONY: help $(VENV) venv demo up down status test lint chaos bench clean

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)

# `make .venv` (alias `make venv`) bootstraps: creates the venv if needed and installs
# the project editable with its dev extras. Phony, so every target that depends on
# it re-checks the stamp, and reinstalls only when pyproject.toml is newer.
$(VENV) venv: $(STAMP)

$(STAMP): pyproject.toml
	@[ -x $(PYTHON) ] || { echo "$(PY) -m venv $(VENV)"; $(PY) -m venv $(VENV); }
	$(PYTHON) -m pip install -e '.[dev]'
	@touch $@

demo: $(VENV)
	$(MAKE) --no-print-directory up
	$(PYTHON) -m dealflow.demo

up: $(VENV)
	$(PYTHON) -m dealflow.devstack up

# down/status do not (re)install: stopping must work even when pyproject.toml
# changed or the network is away; without a venv nothing of ours can be running.
down:
	@if [ -x $(PYTHON) ]; then $(PYTHON) -m dealflow.devstack down; \
	else echo "no $(VENV): nothing to stop"; fi

status:
	@if [ -x $(PYTHON) ]; then $(PYTHON) -m dealflow.devstack status; \
	else echo "no $(VENV): stack not installed (make up)"; exit 3; fi

# The suite starts what it needs itself (time-skipping server, dev servers on free
# ports, tmp dirs): it must pass with the stack up or down. `time` is bash's keyword,
# so the exit status of pytest is kept and the wall time is printed even on failure.
# -rs names each skip's reason (the browser tests' names the chromium install).
# --durations lists the 15 slowest tests: where the suite's time goes.
# Tests run in one process per core (pytest-xdist); most of their time is spent
# waiting on the servers they start, so two processes on two cores halve the wall
# time. `worksteal` lets an idle process take tests from a busy one; the longest
# tests are collected first (tests/conftest.py). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= auto
test: venv
	@TIMEFORMAT='test suite wall time: %1Rs'; time $(VENV)/bin/pytest -q -rs \
		-n $(TEST_WORKERS) --dist worksteal --durations=15

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy $(LINT_PATHS)

chaos: venv
	$(PYTHON) -m bench.chaos

bench: venv
	$(PYTHON) -m bench.run

# Only after a successful `down`: deleting temporal.db under a running server
# would corrupt it rather than reset it.
clean: down
	rm -rf .data
