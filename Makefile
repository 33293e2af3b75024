# Two commands for a fresh machine (Python 3.10+, no GPU needed): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= demo-out

.PHONY: demo test lint torch bench-signatures bench-dedup bench-train clean

# torch is installed first, by scripts/install-torch.sh: the CPU build unless this machine has an NVIDIA
# GPU (PyPI's plain `torch` wheel is the CUDA build: 15 nvidia-* packages, several GB). Override with
#   TORCH=cpu | cuda | keep (any torch >= 2.6 already there) | <index URL>
# at any time: a changed choice replaces the venv's torch on the next `make demo` / `make test`.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=
TORCH         ?= $(if $(TORCH_INDEX),$(TORCH_INDEX),$(if $(TORCH_VERSION),auto,keep))

# Two layers: what the demo needs, then the test and lint extras (make test).
$(BIN)/.installed-base: pyproject.toml scripts/install-torch.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	scripts/install-torch.sh $(BIN)/python '$(TORCH_VERSION)' '$(TORCH)'
	$(BIN)/python -m pip install -q -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed-base
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(BIN)/.bench-installed: $(BIN)/.installed-dev
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $@

# Runs on every make demo/test: nothing to do unless TORCH (or TORCH_VERSION) changed since the install.
torch: $(BIN)/.installed-base
	@scripts/install-torch.sh $(BIN)/python '$(TORCH_VERSION)' '$(TORCH)'

## The main job on the embedded sample (no ../shared, no downloads at run time).
demo: $(BIN)/.installed-base torch
	$(BIN)/slimpipe demo -o $(OUT)
	@echo "slimpipe is installed in $(VENV): run it as $(BIN)/slimpipe, or 'source $(BIN)/activate' first."

## The test suite (a real local Ray, started once per session).
test: $(BIN)/.installed-dev torch
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check slimpipe tests benchmarks

bench-signatures: $(BIN)/.bench-installed
	$(BIN)/python benchmarks/bench_signatures.py

bench-dedup: $(BIN)/.bench-installed
	$(BIN)/python benchmarks/bench_dedup.py

bench-train: $(BIN)/.bench-installed
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
