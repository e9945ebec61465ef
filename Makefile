# Set-up is real: `make run` and `make test` work on a fresh clone with nothing but python3.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= models/default
HOST ?= 127.0.0.1
PORT ?= 8000
STAMP := $(VENV)/.installed-stamp

.PHONY: install model run test test-slow lint bench bench-compare bench-overhead soak clean help

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned and installed first so that pip takes the CPU wheel, never a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,loadtest]'
	touch $(STAMP)

install: $(STAMP)

$(MODEL)/config.json: | $(STAMP)
	$(BIN)/python -m service.model_builder --preset default --out $(MODEL)

model: $(MODEL)/config.json

run: install model
	$(BIN)/python -m service --model $(MODEL) --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check service tests loadtest benchmarks
	$(BIN)/mypy

test: install lint
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# The standard workload of the core issue (see loadtest/compare.py); BENCH_ARGS adds or overrides flags,
# e.g. `make bench-compare BENCH_ARGS="--num-prompts 16"` for a smoke run.
PEER_VENV ?= .venv-peer
BENCH_ARGS ?=

bench: install model
	$(BIN)/python -m loadtest.compare --servers hfserve --model-dir $(MODEL) $(BENCH_ARGS)

# transformers serve gets its own venv, at the transformers version of ours; torch is pinned first for the CPU wheel.
$(PEER_VENV)/bin/transformers: | $(STAMP)
	$(PY) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(PEER_VENV)/bin/python -m pip install --quiet \
		"transformers[serving]==$$($(BIN)/python -c 'import transformers; print(transformers.__version__)')"

bench-compare: install model $(PEER_VENV)/bin/transformers
	$(BIN)/python -m loadtest.compare --servers hfserve,hfserve-auto,transformers,static --repeat 3 \
		--model-dir $(MODEL) --peer-venv $(PEER_VENV) --out docs/benchmarks.md $(BENCH_ARGS)

# The server's own overhead, with a runner that costs nothing (benchmarks/): scheduler + bookkeeping per step at
# 256 sequences, then the whole service over HTTP against a bare aiohttp server, alternating, in one run.
# OVERHEAD_ARGS goes to the HTTP one, e.g. "--rounds 3 --duration 3", or "--profile DIR" for a py-spy profile.
OVERHEAD_ARGS ?=

bench-overhead: install model
	$(BIN)/python -m benchmarks.scheduler_overhead --model-dir $(MODEL)
	$(BIN)/python -m benchmarks.http_overhead --model-dir $(MODEL) $(OVERHEAD_ARGS)

# Mixed normal, aborted and invalid traffic for SOAK_MINUTES against a real server on $(MODEL), then leak checks
# and a printed report (tests/soak/test_soak.py). SOAK_MINUTES=0.2 is a smoke of the same path.
SOAK_MINUTES ?= 3

soak: install model
	SOAK_MINUTES=$(SOAK_MINUTES) SOAK_MODEL=$(MODEL) $(BIN)/python -m pytest -q -m slow -s tests/soak

clean:
	rm -rf $(VENV) models build *.egg-info

# `make help` lists the targets. It is not the default goal: plain `make` still builds the first target, $(BIN)/python.
help:
	@echo "make install         create $(VENV) and install the project with its dev and loadtest extras"
	@echo "make model           build the default model offline into $(MODEL)"
	@echo "make run             install, build the model, serve it on $(HOST):$(PORT)"
	@echo "make lint            ruff + mypy"
	@echo "make test            lint, then the test suite, less the tests marked slow"
	@echo "make test-slow       the tests marked slow: the soak, more engine fuzz seeds, transformers serve smoke"
	@echo "make soak            mixed traffic for SOAK_MINUTES ($(SOAK_MINUTES)) against $(MODEL), then leak checks"
	@echo "make bench           the standard benchmark against this server (BENCH_ARGS adds flags)"
	@echo "make bench-compare   the same workload against hfserve (fp32 and --dtype auto), transformers serve and"
	@echo "                     a static-batching baseline, in 3 rounds, written to docs/benchmarks.md"
	@echo "make bench-overhead  scheduler micro-benchmark and the null-model service benchmark (OVERHEAD_ARGS)"
	@echo "make clean           remove $(VENV), models, build and *.egg-info"
