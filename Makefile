# Two commands for a fresh machine (Python 3.10+, no GPU): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= demo-out

.PHONY: demo test lint bench-signatures bench-dedup bench-train clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first, so nothing later pulls a CUDA wheel.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $@

## The main job on the embedded sample (no ../shared, no downloads at run time).
demo: $(BIN)/.installed
	$(BIN)/slimpipe demo -o $(OUT)

## The test suite (a real local Ray, started once per session).
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check slimpipe tests benchmarks

bench-signatures: $(BIN)/.bench-installed
	$(BIN)/python benchmarks/bench_signatures.py

bench-dedup: $(BIN)/.bench-installed
	$(BIN)/python benchmarks/bench_dedup.py

bench-train: $(BIN)/.bench-installed
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
