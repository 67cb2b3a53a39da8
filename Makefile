# Two commands matter (see README "Quick start"): `make demo` and `make test`.
# Both create .venv and install the project on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/python -m stream demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check stream producers tests benchmarks deploy
	$(BIN)/ruff format --check stream producers tests benchmarks deploy
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
