# The two quick-start commands: `make run` and `make test`. Each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HFT_TEST_PG_DSN ?= postgresql://postgres@127.0.0.1:5432/postgres

.PHONY: run test bench lint clean

$(STAMP): pyproject.toml
	@echo "==> $(VENV): creating the virtual environment (first run only)"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	@echo "==> installing hft_pipeline and its dependencies (a few minutes on a fresh clone)"
	$(PY) -m pip install --progress-bar on -e '.[dev]'
	touch $(STAMP)
	@echo "==> installed"

run: $(STAMP)
	$(VENV)/bin/hft up

# One numba cache for the whole suite: each `hft ingest` a test starts has a home of its own and
# would otherwise compile the live-candle kernel again (1-2 s) in every one of them.
# `make lint` runs first (ruff; the import-layer contracts also run inside the suite,
# hft_pipeline_tests/test_layers.py), so CI, which runs `make test`, checks both.
test: $(STAMP) lint
	NUMBA_CACHE_DIR="$${NUMBA_CACHE_DIR:-$(CURDIR)/.hft/numba-cache}" $(VENV)/bin/pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) .hft
