# Two entry points: `make serve` (install, then run the service with embedded defaults)
# and `make test` (install, then run the whole test suite). Both create .venv on first use.
PYTHON ?= python3
# Where `make serve` listens: make serve HOST=0.0.0.0 PORT=9000
HOST ?= 127.0.0.1
PORT ?= 8000
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The console's JavaScript tools (ESLint, Prettier) at the versions package-lock.json pins.
NODE_STAMP := node_modules/.installed
JS := eslint.config.js api/console/static/js

.PHONY: install serve test lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'  # everything: service, engine, test tools
	touch $(STAMP)

install: $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

serve: install
	$(BIN)/mifo serve --host $(HOST) --port $(PORT)

# Two processes, a file each at a time (module fixtures stay in one process): the suite
# waits on real servers and subprocesses much of the time, so two overlap well on 2 cores.
test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: install $(NODE_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy api core worker mifo_engine mifo_cli mifo_client
	node_modules/.bin/eslint $(JS)
	node_modules/.bin/prettier --check $(JS)

bench: install
	$(BIN)/python bench/learn_step.py && $(BIN)/python bench/synthesis.py
