# Bulkhead developer commands. `make help` lists them.
# Everything runs from a project-local virtualenv (.venv) built from the lock files, the same
# install steps the Docker image uses.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.DEFAULT_GOAL := help
.PHONY: help dev test lint typecheck unit bench bench-quick bench-identity bench-chat bench-soak bench-1m bench-cli lock clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: $(BIN)/python requirements.lock pyproject.toml
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.lock
	$(BIN)/pip install --quiet -r requirements-dev.lock
	@touch $@

# promtool checks and unit-tests the alert rules (deploy/prometheus/). A promtool on PATH is
# used as it is; otherwise it is unpacked from Debian's `prometheus` package into the venv, so
# no Prometheus server is installed or started. `apt-get update` runs only when apt cannot
# find the package (a fresh machine has no package lists).
PROMTOOL := $(or $(shell command -v promtool 2>/dev/null),$(BIN)/promtool)

$(BIN)/promtool: | $(BIN)/python
	@command -v apt-get >/dev/null || { echo "promtool missing: install Prometheus's promtool on PATH" >&2; exit 1; }
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && cd "$$tmp" && \
	{ apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; }; } && \
	dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool > promtool && \
	install -m 0755 promtool $(abspath $@)
	$@ --version

dev: $(VENV)/.runtime ## Run the service on the embedded default (Postgres, Qdrant Edge, demo tenants)
	$(BIN)/bulkhead dev

test: $(VENV)/.dev $(PROMTOOL) ## Run the whole suite: lint, format check, types, Dockerfile lint, tests
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy app
	$(BIN)/hadolint Dockerfile
	$(BIN)/pytest

lint: $(VENV)/.dev ## ruff check + format check only
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev ## mypy --strict on app/
	$(BIN)/mypy app

unit: $(VENV)/.dev $(PROMTOOL) ## Unit tests only (no database)
	$(BIN)/pytest tests/unit

bench: $(VENV)/.dev ## Benchmarks: 100k chunks across 100 tenants (see benchmarks/README.md)
	$(BIN)/python -m benchmarks --chunks 100000 --tenants 100

bench-quick: $(VENV)/.dev ## Benchmark smoke run (1k chunks, 10 tenants)
	$(BIN)/python -m benchmarks --quick

bench-identity: $(VENV)/.dev ## Identity micro-benchmarks (JWT, API key, revocation propagation)
	$(BIN)/python -m benchmarks.identity

bench-chat: $(VENV)/.dev ## /v1/chat vs the provider emulator at concurrency 16, py-spy profile
	$(BIN)/python -m benchmarks.chat --profile-seconds 10

bench-soak: $(VENV)/.dev ## Memory soak: RSS growth per 10,000 requests per kind (re-ingest, search, chat...)
	$(BIN)/python -m benchmarks.soak

bench-1m: $(VENV)/.dev ## Qdrant Edge in-process: 1M chunks / 1,000 tenants, filtered p99, ingest rate, RSS
	$(BIN)/python -m benchmarks.edge_scale --chunks 1000000 --tenants 1000

bench-cli: $(VENV)/.dev ## CLI wall times: --help, token, operator commands on a throwaway dev instance
	$(BIN)/python -m benchmarks.cli

lock: ## Regenerate requirements.lock and requirements-dev.lock from pyproject.toml
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet .
	{ echo "# Runtime lock: exact versions the Docker image and CI install (regenerate with \`make lock\`)."; \
	  .lock-venv/bin/pip freeze --exclude bulkhead; } > requirements.lock
	.lock-venv/bin/pip install --quiet '.[dev]'
	{ echo "# Dev/test tools on top of requirements.lock (regenerate with \`make lock\`)."; \
	  .lock-venv/bin/pip freeze --exclude bulkhead | grep -vxF -f requirements.lock; } > requirements-dev.lock
	rm -rf .lock-venv

clean: ## Remove the virtualenv, caches and local dev state (.bulkhead/)
	rm -rf $(VENV) .bulkhead .mypy_cache .ruff_cache .pytest_cache
