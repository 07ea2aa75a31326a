# smollm: `make demo` runs the embedded-default pipeline, `make test` runs every test.
# Both install first (into .venv) when needed.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# Prefect's telemetry heartbeat locks the test harness's SQLite; the network is closed anyway.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MLFLOW_ENABLE_TELEMETRY := false

.PHONY: install demo test bench loop-bench lint format clean serve stop test-deps

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m pip check
	touch $@

demo: install
	$(BIN)/smollm run pipeline=demo

lint: install
	$(BIN)/ruff check smollm tasks flows tests bench
	$(BIN)/ruff format --check smollm tasks flows tests bench
	$(BIN)/mypy smollm

format: install
	$(BIN)/ruff check --fix smollm tasks flows tests bench
	$(BIN)/ruff format smollm tasks flows tests bench

# Debian's chromium and postgresql for the served setup's end-to-end tests.
test-deps:
	scripts/install-test-deps.sh

# Two workers (pytest-xdist), a test file each, one torch thread per test (tests/conftest.py): the
# 2-core machine runs two tests at once. --durations: the slowest tests, against the 30-minute budget.
test: install lint test-deps
	$(PY) -m pytest -m "not gpu" -q -n 2 --dist loadfile --durations=30

# Prefect server + MLflow server + the deployments' executor, on loopback, in the background.
serve: install
	$(PY) -m smollm.services start

stop:
	$(PY) -m smollm.services stop

# Every benchmark as a ratio against its baseline, measured in the same run -> bench/results.md.
bench: install
	$(PY) bench/run_all.py

# The loop's decisions against static, uniform, hand-written and hindsight mixtures, 3 seeds each
# (bench/loop_bench.yaml) -> bench/loop_results.md + .png; about 2 hours on 2 cores from scratch (48 runs of
# the demo's main run, 34 of them the hindsight grid); a re-run reuses every finished run through the cache.
loop-bench: install
	$(PY) bench/loop_bench.py

clean:
	rm -rf work .pytest_cache .ruff_cache .mypy_cache
