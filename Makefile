# One entry point for every job; each target creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-parsers format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

.venv: $(STAMP)

run: .venv
	$(BIN)/hostd serve

lint: .venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: .venv
	$(BIN)/python bench/run.py

# The measurement behind the choice of multipart parser (needs the two it was compared with).
bench-parsers: .venv
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/multipart_parsers.py

format: .venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
