# The two commands of the README: `make run` and `make test`. Both build .venv when absent.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PRESET ?= quick
RUN_OUT ?= runs/quick

.PHONY: run test venv clean

$(BIN)/morphtransfer: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch first, pinned: its CPU wheel is on disk; a bare `torch` would fetch CUDA wheels.
	$(BIN)/python -m pip install "torch==2.13.0"
	$(BIN)/python -m pip install -e ".[test]"
	touch $(BIN)/morphtransfer

$(VENV): $(BIN)/morphtransfer

venv: $(VENV)

run: $(BIN)/morphtransfer
	$(BIN)/morphtransfer run --preset $(PRESET) --out $(RUN_OUT)

test: $(BIN)/morphtransfer
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
