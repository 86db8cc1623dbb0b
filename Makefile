# rtkit's tasks. `make help` lists them; `make run` and `make test` set up everything they need.
PYTHON ?= python3
# The lowest Python rtkit supports, for `make test-min`: found where pyenv or Debian put it.
PYTHON_MIN ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10 /usr/local/bin/python3.10 /usr/bin/python3.10))
VENV      := .venv
BIN       := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-stamp
DEV_STAMP := $(VENV)/.dev-stamp
MIN_VENV  := .venv-min
MIN_STAMP := $(MIN_VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install run test test-min check lint bench profile clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The demo needs rtkit and uvicorn's C speed-ups, nothing of the development tools.
# The newest releases, less those past what rtkit's uvicorn protocol was tested with.
$(RUN_STAMP): pyproject.toml constraints/tested.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints/tested.txt -e '.[speed]'
	touch $@

$(DEV_STAMP): pyproject.toml constraints/tested.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints/tested.txt -e '.[dev]'
	touch $@

$(MIN_STAMP): pyproject.toml constraints/minimum.txt
	@test -n "$(PYTHON_MIN)" || { echo "make test-min needs Python 3.10: set PYTHON_MIN=/path/to/python3.10" >&2; exit 1; }
	rm -rf $(MIN_VENV)
	$(PYTHON_MIN) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/python -m pip install --quiet -c constraints/minimum.txt -e '.[test,speed,redis,bench]'
	touch $@

install: $(DEV_STAMP) ## create .venv and install rtkit with its development tools

run: $(RUN_STAMP) ## serve the demo app on http://127.0.0.1:8000 (ARGS="--port 9000" to change)
	$(BIN)/rtkit serve $(ARGS)

test: $(DEV_STAMP) ## run the test suite with branch coverage, on the newest dependencies
	$(BIN)/python -m pytest --cov=rtkit --cov-report=term $(ARGS)

test-min: $(MIN_STAMP) ## run the test suite on Python 3.10 with every dependency at its declared minimum
	$(MIN_VENV)/bin/python -m pip freeze --exclude-editable | grep -iE '^(starlette|msgspec|anyio|uvicorn|websockets|pyjwt|redis)=='
	$(MIN_VENV)/bin/python -m pytest -p no:cacheprovider $(ARGS)

check: $(DEV_STAMP) ## read-only checks: ruff lint, ruff format check, mypy strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

lint: $(DEV_STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(DEV_STAMP) ## run the benchmarks (results in benchmarks/results/)
	$(BIN)/python -m benchmarks $(ARGS)

profile: $(DEV_STAMP) ## sample the echo servers with py-spy: where each one's time goes (benchmarks/results/profile/)
	$(BIN)/python -m benchmarks.sampling $(ARGS)

clean: ## remove the venvs, caches and results
	rm -rf $(VENV) $(MIN_VENV) .mypy_cache .ruff_cache .pytest_cache .coverage htmlcov benchmarks/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
