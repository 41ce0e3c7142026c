# One entry point for every job; each target creates .venv when it is missing.
# `make run` installs only what serving needs; `make test` (and lint, format) adds the test
# extra. Two stamps, so that each installs only what the other has not.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint bench bench-s3 bench-parsers format clean

$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

# hostd is installed (editable) by now, so pip takes it as it is and adds only the extra's
# packages.
$(TEST_STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet 'hostd[test]'
	touch $(TEST_STAMP)

# The whole development set-up (helpers and editors use `make .venv`).
.venv: $(TEST_STAMP)

# `make run PORT=8080` (or HOST=0.0.0.0) overrides hostd.toml's server.port (server.host).
run: $(RUN_STAMP)
	$(BIN)/hostd serve $(if $(PORT),--port $(PORT)) $(if $(HOST),--host $(HOST))

lint: $(TEST_STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(RUN_STAMP)
	$(BIN)/python bench/run.py

# The same rows again with the blobs in SeaweedFS (obstore and `weed` come with the test extra).
bench-s3: $(TEST_STAMP)
	$(BIN)/python bench/run.py --storage s3

# The measurement behind the choice of multipart parser (needs the two it was compared with).
bench-parsers: $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/multipart_parsers.py

format: $(TEST_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
