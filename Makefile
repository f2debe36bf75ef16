# Two entry points for a fresh machine: `make demo` (main job) and `make test` (whole test suite).
# `make device-bundle` fills .device/ for benchmarks/gpu_check.sh on a GPU machine without a package index.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench device-bundle clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=77"  # the wheel test builds without isolation

$(VENV)/.installed-core: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[notebooks]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed-core

demo: $(VENV)/.installed-core
	$(BIN)/lotterylab study sculpt --scale cpu

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_overhead.py
	$(BIN)/python benchmarks/bench_epoch.py

device-bundle: $(VENV)/.installed-core
	$(BIN)/python benchmarks/device_bundle.py

clean:
	rm -rf $(VENV) runs
