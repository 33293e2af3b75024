# Two commands for a fresh machine (Python 3.10+, no GPU needed): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= demo-out

.PHONY: demo test lint bench-signatures bench-dedup bench-train clean

# torch is installed first. On Linux, PyPI's `torch` wheel is the CUDA build (17 nvidia-* packages, several
# GB); a machine whose pip is pointed at a local CPU wheel (like this project's CI) gets that instead.
# CPU-only users: `TORCH_INDEX=cpu make test` installs the CPU wheel from download.pytorch.org/whl/cpu
# (any other value is used as the index URL itself). `TORCH_VERSION=` (empty) keeps any torch >= 2.6.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=
TORCH_PIP_ARGS = $(if $(filter cpu,$(TORCH_INDEX)),--index-url https://download.pytorch.org/whl/cpu,$(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)))
TORCH_SPEC     = $(if $(TORCH_VERSION),torch==$(TORCH_VERSION),'torch>=2.6')

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) $(TORCH_SPEC)
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
