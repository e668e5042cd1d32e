# Two commands for a fresh machine: `make demo` (set up, run the main job) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint
setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/ssal demo $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
