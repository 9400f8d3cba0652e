PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The JavaScript checks of make lint (typescript, @asyncapi/parser); no telemetry.
NODE_STAMP := node_modules/.installed
export SCARF_ANALYTICS := false
ARGS ?=

.PHONY: help install serve test screenshot bench bench-full lint package format clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install presence with its test and lint tools

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "presence needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

serve: install ## Run the server (in-process Redis unless --redis-url); pass flags as ARGS="..."
	$(BIN)/python -m presence serve $(ARGS)

test: install ## Run the whole test suite (starts its own redis-server)
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(ARGS)

screenshot: install ## Retake docs/demo.png with the browser test (needs chromium)
	PRESENCE_DEMO_SCREENSHOT=docs/demo.png $(BIN)/python -m pytest tests/test_demo_page.py

bench: install ## Short benchmarks (under 3 minutes; needs redis-server, nginx and nchan)
	$(BIN)/python -m bench

bench-full: install ## The whole benchmark matrix (long)
	$(BIN)/python -m bench --full

$(NODE_STAMP): package.json package-lock.json
	npm ci --quiet --no-audit --no-fund --ignore-scripts
	@touch $(NODE_STAMP)

lint: install $(NODE_STAMP) ## ruff, mypy --strict and the JavaScript checks (needs node and npm)
	$(BIN)/ruff check presence tests examples bench
	$(BIN)/ruff format --check presence tests examples bench
	$(BIN)/mypy
	node tools/check_asyncapi.mjs docs/asyncapi.yaml
	node_modules/.bin/tsc --noEmit -p tsconfig.json

package: install ## Build the sdist and wheel, check them, smoke-test the wheel in a new venv
	PYTHON=$(BIN)/python tools/check_package.sh

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix presence tests examples bench
	$(BIN)/ruff format presence tests examples bench

clean: ## Remove .venv and caches
	rm -rf $(VENV) node_modules build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
