# `make demo` runs the main job, `make test` the test suite; each creates .venv if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo gaussian lint test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,fid]"
	touch $@

DEMO := workdirs/demo

# Train OT-CFM from N(0, I) to two moons, sample with Dopri5 (PNG in $(DEMO)), print W2.
demo: $(BIN)/.installed
	rm -rf $(DEMO)
	$(BIN)/fm-jax train --config toy2d --workdir $(DEMO)
	$(BIN)/fm-jax sample --workdir $(DEMO) --solver dopri5
	$(BIN)/fm-jax eval --workdir $(DEMO) --solvers dopri5 euler:10 euler:2 --num 2000

gaussian: $(BIN)/.installed
	$(BIN)/fm-jax gaussian

# Static checks: ruff (lint and format) on the whole tree, mypy on the math modules.
lint: $(BIN)/.installed
	$(BIN)/ruff check fm_jax tests experiments
	$(BIN)/ruff format --check fm_jax tests experiments
	$(BIN)/mypy

test: $(BIN)/.installed
	$(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder

bench: $(BIN)/.installed
	$(BIN)/python experiments/bench/startup.py
	$(BIN)/python experiments/bench/couplings.py
	$(BIN)/python experiments/bench/train_speed.py
	$(BIN)/python experiments/bench/engine.py
	$(BIN)/python experiments/bench/sampling.py
	$(BIN)/python experiments/bench/likelihood.py
	$(BIN)/python experiments/bench/teacher_cost.py
	$(BIN)/python experiments/bench/ot_overhead.py
	$(BIN)/python experiments/bench/large_batch.py
	$(BIN)/python experiments/bench/inception.py
	$(BIN)/python experiments/bench/discrete_step.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
