# dts — the single entry point for building, running and testing. `make` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= .run
CMD ?= echo hello from dts
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help build all clean proto test test-unit test-chaos test-systemd lint format run run-server run-worker run-client

help: ## show this list
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/dts-server: setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

build: $(BIN)/dts-server ## create .venv and install dts with its dev tools (dts-server, dts-worker, dts-client in .venv/bin)

all: clean build ## clean, then build

clean: ## remove the venv, caches and run state
	rm -rf $(VENV) $(RUN_DIR) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

proto: build ## regenerate dts/v1 from proto/dts/v1/*.proto
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -Iproto \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. proto/dts/v1/*.proto

test: build ## run the whole test suite against real redis-server, server and worker processes
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: build ## only the fast unit tests
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-chaos: build ## the fault-injection suite: kills, freezes, outages, network cuts, a soak
	$(BIN)/pytest tests/chaos $(PYTEST_ARGS)

test-systemd: build ## boot a real systemd in a container and drive the shipped units (root)
	$(BIN)/pytest tests/systemd $(PYTEST_ARGS)

lint: build ## ruff and mypy
	$(BIN)/ruff check dts tests
	$(BIN)/ruff format --check dts tests
	$(BIN)/mypy

format: build ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format dts tests
	$(BIN)/ruff check --fix dts tests

run: build ## start redis (own, unless DTS_REDIS_URL answers), the server and 2 workers; Ctrl+C stops all
	$(BIN)/python -m dts.devrun --dir $(RUN_DIR)

run-server: build ## run dts-server in the foreground (settings from DTS_* / /etc/dts/server.conf)
	$(BIN)/dts-server

run-worker: build ## run one dts-worker in the foreground
	$(BIN)/dts-worker

run-client: build ## submit CMD='...' and wait for its result
	$(BIN)/dts-client submit --wait --shell -- '$(CMD)'
