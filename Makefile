# Set-up is real: `make run` and `make test` work on a fresh clone with nothing but python3.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= models/default
HOST ?= 127.0.0.1
PORT ?= 8000
STAMP := $(VENV)/.installed-stamp

.PHONY: install model run test test-slow lint bench bench-compare soak clean

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
	$(BIN)/ruff check service tests loadtest
	$(BIN)/mypy

test: install lint
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) models build *.egg-info
