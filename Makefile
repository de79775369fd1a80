# `make demo` runs the main job, `make test` the test suite; each creates .venv if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/fm-jax gaussian

test: $(BIN)/.installed
	$(BIN)/python -m pytest -n auto

bench: $(BIN)/.installed
	$(BIN)/python experiments/bench/couplings.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
