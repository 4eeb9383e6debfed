# Every target creates the virtual environment when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: demo test lint verify figures bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[chain,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/qtm simulate --out runs/demo-sweep.parquet

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .numba_cache .pytest_cache
