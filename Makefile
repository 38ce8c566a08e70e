# One entry point for installing, running, testing and checking chatgpt-proxy.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: install run test lint check bench deploy-test

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

run: install  ## install and start the proxy (SQLite, in-memory limits, no other service)
	$(BIN)/chatgpt-proxy serve

test: install  ## the whole test suite
	$(BIN)/pytest -q -n 2 --dist loadfile  # two processes, one test file to each

deploy-test: install  ## build the container image and run it with podman (tests/deploy/)
	PYTEST=$(BIN)/pytest deploy/test.sh

lint: install  ## ruff and mypy --strict
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

check: lint test

bench: install
	bench/run.sh
