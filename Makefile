# dts — the single entry point for building, running and testing. `make` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= .run
CMD ?= echo hello from dts
PYTEST_ARGS ?=
PEERS_VENV ?= .venv-peers
PEERS_REQ := tests/bench/peers-requirements.txt

.DEFAULT_GOAL := help
.PHONY: help build all clean proto test test-unit test-chaos test-cluster test-systemd bench bench-peers bench-profile lint format screenshots run run-server run-worker run-client install uninstall

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

test-cluster: build ## (root) 3 servers, 2 workers, PostgreSQL, Redis+Sentinel on netns hosts: faults under load, a soak
	$(BIN)/pytest tests/cluster $(PYTEST_ARGS)

test-systemd: build ## boot a real systemd in a container and drive the shipped units (root)
	$(BIN)/pytest tests/systemd $(PYTEST_ARGS)

bench: build ## benchmark throughput, submit rate, latency, scale, memory (BENCH_ARGS=--quick for a smoke run)
	$(BIN)/python -m tests.bench.run $(BENCH_ARGS)

# A fresh .venv-peers whenever the pinned set changes. If the set will not install whole, each pin
# is tried on its own, the peers that did not install are reported failed by the benchmark, and
# the stamp is left unmade so the next run tries again.
$(PEERS_VENV)/.installed: $(PEERS_REQ)
	rm -rf $(PEERS_VENV)
	$(PYTHON) -m venv $(PEERS_VENV)
	if $(PEERS_VENV)/bin/pip install --quiet --disable-pip-version-check -r $(PEERS_REQ); then \
	  touch $@; \
	else \
	  echo "bench-peers: the pinned set did not install; trying each pin on its own" >&2; \
	  grep -Ev '^[[:space:]]*(#|$$)' $(PEERS_REQ) | while read -r req; do \
	    $(PEERS_VENV)/bin/pip install --quiet --disable-pip-version-check "$$req" \
	      || echo "bench-peers: could not install $$req" >&2; \
	  done; \
	fi

bench-peers: build $(PEERS_VENV)/.installed ## the same shell-job workload on dts, Celery, RQ, Dramatiq, huey, arq (.venv-peers)
	$(BIN)/python -m tests.bench.peers --venv $(PEERS_VENV) $(BENCH_ARGS)

# py-spy samples the server and the worker: a dev tool of this target only, installed on first use
$(BIN)/py-spy: | $(BIN)/dts-server
	$(BIN)/pip install --quiet --disable-pip-version-check 'py-spy>=0.4,<0.5'

bench-profile: build $(BIN)/py-spy ## where the server's and worker's CPU goes (py-spy) in a throughput run: bench-results/profile.md (BENCH_ARGS=--n=2000)
	$(BIN)/python -m tests.bench.profile $(BENCH_ARGS)

screenshots: build ## docs/web/*.png: each dashboard page in Debian's chromium, over a cluster of its own
	$(BIN)/python -m tests.web.screenshots --out docs/web

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

# the cluster `make run` started, while it runs: its address is in $(RUN_DIR)/client.conf
run-client: build ## submit CMD='...' to the cluster `make run` started and wait for its result
	$(BIN)/dts-client $$(test -f $(RUN_DIR)/client.conf && echo -c $(RUN_DIR)/client.conf) \
	  submit --wait --shell -- '$(CMD)'

# ---- system install (root): `make install`, `make uninstall [PURGE=1]` -----------------------------
# Where things go; the systemd units and etc/supervisor/dts.conf name /usr/local/bin and /etc/dts.
PREFIX ?= /opt/dts
BINDIR ?= /usr/local/bin
CONFDIR ?= /etc/dts
UNITDIR ?= /etc/systemd/system
SUPERVISOR_CONF ?= /etc/supervisor/conf.d/dts-worker.conf
# SUPERVISOR=1: also run the worker pool under supervisord (Debian's `supervisor` package):
# install the [program:worker] section of etc/supervisor/dts.conf, as user dts, on its own.
SUPERVISOR ?=
PURGE ?=
# e.g. "--no-index --find-links DIR" on a host without access to PyPI
PIP_INSTALL_ARGS ?=
PROGRAMS := dts-server dts-worker dts-client dts-web
UNITS := dts-server.service dts-worker@.service dts-workers.target dts-web.service
SYSTEMD_RUNNING = test -d /run/systemd/system

install: ## (root) venv in /opt/dts, commands in /usr/local/bin, units, /etc/dts, user dts [SUPERVISOR=1]
	@test "$$(id -u)" = 0 || { echo "make install: run as root" >&2; exit 1; }
	$(PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install --quiet --disable-pip-version-check $(PIP_INSTALL_ARGS) --upgrade .
	for p in $(PROGRAMS); do ln -sfn $(PREFIX)/bin/$$p $(BINDIR)/$$p; done
	getent group dts >/dev/null || groupadd --system dts
	getent passwd dts >/dev/null || useradd --system --gid dts --home-dir /var/lib/dts \
	  --no-create-home --shell /usr/sbin/nologin --comment "dts scheduler" dts
	install -d -o dts -g dts -m 0750 /var/lib/dts
	install -d -o dts -g dts -m 0755 /var/lib/dts-worker /var/log/dts
	install -d -m 0755 $(CONFDIR) $(UNITDIR)
	@# existing configs are the operator's: never overwritten
	for f in etc/dts/*.conf; do \
	  test -e $(CONFDIR)/$${f##*/} || install -m 0644 $$f $(CONFDIR)/; done
	install -m 0644 $(addprefix systemd/,$(UNITS)) $(UNITDIR)/
	if [ -n "$(SUPERVISOR)" ]; then \
	  install -d $(dir $(SUPERVISOR_CONF)) && \
	  awk '/^\[/ { keep = ($$0 == "[program:worker]") } keep' etc/supervisor/dts.conf \
	    | sed -e 's/^;user=dts$$/user=dts/' -e 's/^;directory=/directory=/' > $(SUPERVISOR_CONF); \
	fi
	if $(SYSTEMD_RUNNING); then systemctl daemon-reload; fi
	@echo "dts installed in $(PREFIX); next: systemctl enable --now dts-server"

uninstall: ## (root) undo `make install`; keeps /etc/dts, /var/lib/dts*, /var/log/dts and user dts unless PURGE=1
	@test "$$(id -u)" = 0 || { echo "make uninstall: run as root" >&2; exit 1; }
	@# stop (the workers drain) and disable every instance that is enabled
	if $(SYSTEMD_RUNNING); then \
	  systemctl stop dts-web.service dts-workers.target 'dts-worker@*.service' dts-server.service || true; \
	  systemctl disable dts-web.service dts-server.service dts-workers.target $$(cd $(UNITDIR) && \
	    ls -d *.wants/dts-worker@*.service 2>/dev/null | xargs -rn1 basename | sort -u) || true; \
	fi
	if [ -e $(SUPERVISOR_CONF) ]; then \
	  rm -f $(SUPERVISOR_CONF); \
	  if command -v supervisorctl >/dev/null && supervisorctl pid >/dev/null 2>&1; then \
	    supervisorctl update; fi; fi
	rm -f $(addprefix $(UNITDIR)/,$(UNITS))
	if $(SYSTEMD_RUNNING); then systemctl daemon-reload; systemctl reset-failed 'dts-*' || true; fi
	for p in $(PROGRAMS); do \
	  if [ "$$(readlink $(BINDIR)/$$p)" = $(PREFIX)/bin/$$p ]; then rm -f $(BINDIR)/$$p; fi; done
	rm -rf $(PREFIX)
	if [ -n "$(PURGE)" ]; then \
	  rm -rf $(CONFDIR) /var/lib/dts /var/lib/dts-worker /var/log/dts; \
	  if getent passwd dts >/dev/null; then userdel dts; fi; \
	  if getent group dts >/dev/null; then groupdel dts; fi; fi
