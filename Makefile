# One way to run things: the README names these targets and CI calls them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	infra/dev/system-packages.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## The main job on the bundled sample, with embedded defaults (SQLite, local store, offline engine
## unless VOXBATCH_VLLM_URL is set).
demo: $(STAMP)
	$(BIN)/voxbatch run tests/data/sample-talk.mp3 --preset conference-talk \
		--output-dir voxbatch-output/sample-talk

lint: $(STAMP)
	$(BIN)/ruff check jobs workers api tests bench
	$(BIN)/ruff format --check jobs workers api tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

## All tests: lint, types, then every tier.
test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python -m bench.split
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.fanout --windows 8 --concurrency 4 --latency 1.0
	$(BIN)/python -m bench.upload --gb 2

clean:
	rm -rf voxbatch-data voxbatch-output .pytest_cache .mypy_cache .ruff_cache
