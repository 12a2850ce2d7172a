# Herd's developer entry points. `make up` runs the whole stack locally; `make test` is what CI runs.
# Set-up is idempotent and quick once done: pip only reruns when pyproject.toml changes.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
HERD := $(VENV)/bin/herd
# The stamp's name carries pyproject.toml's hash: a dependency change reinstalls, a mere touch does not.
PYPROJECT_HASH := $(shell sha256sum pyproject.toml | cut -c1-16)
STAMP := $(VENV)/.herd-installed-$(PYPROJECT_HASH)
BOOTSTRAP_PYTHON := $(shell command -v python3.11 || command -v python3.12 || command -v python3)
# What running needs: redis-server and nginx.
RUN_PACKAGES := redis-server nginx
# What only the tests need. chromium: the edge tests drive a real headless browser against the stack.
# squid: the registry tests pull through a real forward proxy (tests/support/proxy.py).
# prometheus: its promtool checks the alert rules; rsync: the Ansible role copies the bundle with it (tests/deploy).
TEST_PACKAGES := chromium squid prometheus rsync
# pytest's slowest tests are printed at the end of every run, so a test that grew shows up.
PYTEST_ARGS ?= --durations=25

.PHONY: help setup test-setup system-deps test-deps apt-install up test soak lint bench clean distclean

help:
	@echo "make setup      create .venv, install Herd and its dev tools, install redis-server and nginx"
	@echo "make up         set up, then run the stack (nginx on OLLAMA_HOST, default 127.0.0.1:11434)"
	@echo "make test       set up (with the test tools), place the default model, run the whole test suite"
	@echo "make soak       the ten-minute soak (make test runs the same test for 90 s)"
	@echo "make lint       ruff check, ruff format --check, mypy"
	@echo "make bench      Herd against llama-server and llama-batched-bench (docs/benchmarks.md)"
	@echo "make clean      remove the run dir (.run) and tool caches; keeps .venv"
	@echo "make distclean  clean, and remove .venv too (the llama-cpp-python build takes minutes)"

setup: system-deps $(STAMP)

test-setup: setup test-deps

# System packages come from apt (each package is named after its binary; /usr/sbin is checked by hand
# because it is not on an ordinary user's PATH). apt-get update runs only when something is missing, so a
# set-up machine never touches the network here.
system-deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(RUN_PACKAGES)"

test-deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(TEST_PACKAGES)"

apt-install:
	@missing=""; \
	for pkg in $(PACKAGES); do \
	  if ! command -v "$$pkg" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$$pkg" ] && [ ! -x "/usr/bin/$$pkg" ]; then \
	    missing="$$missing $$pkg"; \
	  fi; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ]; then \
	  echo "Herd needs these system packages:$$missing. Install them with:"; \
	  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends$$missing"; \
	  exit 1; \
	fi; \
	echo "==> installing$$missing with apt-get"; \
	apt-get update; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing

$(PY):
	@if [ -z "$(BOOTSTRAP_PYTHON)" ]; then echo "no python3 found (Herd needs Python 3.11+)"; exit 1; fi
	@echo "==> creating $(VENV) with $(BOOTSTRAP_PYTHON)"
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The first install builds llama-cpp-python from source: use every core.
$(STAMP): | $(PY)
	@echo "==> installing Herd and its dev tools into $(VENV)"
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -e '.[dev,worker]'
	rm -f $(VENV)/.herd-installed-*
	touch $@

up: setup
	$(HERD) up

# pytest's own exit status stands: 5 ("no tests collected") fails the target like any other failure.
test: test-setup
	$(HERD) setup
	$(PY) -m pytest $(PYTEST_ARGS)

soak: test-setup
	$(HERD) setup
	HERD_SOAK_SECONDS=600 $(PY) -m pytest tests/reliability/test_soak.py -s $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Herd against llama-server and llama-batched-bench, built once into .cache/peers/ (docs/benchmarks.md).
# Options after BENCH_ARGS, e.g. `make bench BENCH_ARGS="--threads 1 --rounds 5"` (python -m bench.versus
# --help); HERD_BENCH_SHORT=1 for a quick check.
bench: setup
	$(HERD) setup
	$(PY) -m bench.versus $(BENCH_ARGS)

clean:
	rm -rf .run build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
