# rtkit's tasks. `make help` lists them; `make run` and `make test` set up everything they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install run test check lint bench profile clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install rtkit with its development tools

run: $(STAMP) ## serve the demo app on http://127.0.0.1:8000 (ARGS="--port 9000" to change)
	$(BIN)/rtkit serve $(ARGS)

test: $(STAMP) ## run the test suite with branch coverage
	$(BIN)/python -m pytest --cov=rtkit --cov-report=term $(ARGS)

check: $(STAMP) ## read-only checks: ruff lint, ruff format check, mypy strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

lint: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## run the benchmarks (results in benchmarks/results/)
	$(BIN)/python -m benchmarks $(ARGS)

profile: $(STAMP) ## sample the echo servers with py-spy: where each one's time goes (benchmarks/results/profile/)
	$(BIN)/python -m benchmarks.sampling $(ARGS)

clean: ## remove the venv, caches and results
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .coverage htmlcov benchmarks/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
