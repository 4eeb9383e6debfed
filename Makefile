# Every target creates the virtual environment when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: demo chain-demo test lint verify figures docs bench clean

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

# The real chain on a CPU: a 5-iteration tiny-backend chain at CFG 7.5, then its validation report.
chain-demo: $(STAMP)
	$(BIN)/chain run runs/tiny-cfg7.5 --backend tiny --cfg 7.5 --iterations 5
	$(BIN)/chain validate runs/tiny-cfg7.5 --embedder stats --make-reference --report runs/tiny-cfg7.5-report

# The statistical verification suite (about 25 s on 2 idle cores); plots land in runs/verify/.
verify: $(STAMP)
	$(BIN)/qtm verify --out runs/verify

figures: $(STAMP)
	$(BIN)/qtm figures --out figures

# The CLI reference, regenerated from the typer apps (a test keeps it in sync).
docs: $(STAMP)
	$(BIN)/python tools/cli_reference.py

# Speed goals: each script prints its figure and the ratio to a baseline measured in the same run.
bench: $(STAMP)
	$(BIN)/python benchmarks/moments_grid.py
	$(BIN)/python benchmarks/particles_qg.py
	$(BIN)/python benchmarks/particles_sampler.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .numba_cache .pytest_cache
