# The two commands a newcomer needs: `make run` and `make test`. CI calls `make lint test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints-cpu.txt

.PHONY: run test test-fast test-slow lint fmt migrate worker bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip

# gptqmodel 7.6.0 (the last release that accepts torch 2.13) pins an older numpy than the worker's:
# its other needs are in the gptq extra, so it is installed without its own pins.
GPTQMODEL := gptqmodel==7.6.0

$(VENV)/.installed-run: $(BIN)/python pyproject.toml constraints-cpu.txt
	$(PIP) -e '.[worker,client,gguf,gptq]'
	$(PIP) --no-deps '$(GPTQMODEL)'
	touch $@

# llama-cpp-python compiles from source the first time (minutes); pip's wheel cache keeps it.
$(VENV)/.installed-dev: $(BIN)/python pyproject.toml constraints-cpu.txt
	$(PIP) -e '.[worker,client,gguf,gptq,dev]'
	$(PIP) --no-deps '$(GPTQMODEL)'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run  ## install, then serve the embedded profile on http://127.0.0.1:8000
	$(BIN)/gristmill serve --host 127.0.0.1 --port 8000

test: $(VENV)/.installed-dev  ## install with dev tools, then run the whole suite (slow tests too)
	$(BIN)/pytest

test-fast: $(VENV)/.installed-dev
	$(BIN)/pytest -m "not slow"

test-slow: $(VENV)/.installed-dev
	$(BIN)/pytest -m slow

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

migrate: $(VENV)/.installed-run
	$(BIN)/gristmill migrate

worker: $(VENV)/.installed-run
	$(BIN)/gristmill worker

bench: $(VENV)/.installed-dev  ## print speed and memory figures against in-run baselines
	$(BIN)/python -m benchmarks.bench_upload --mb 1024
	$(BIN)/python -m benchmarks.bench_prepare --mb 300
	$(BIN)/python -m benchmarks.bench_tokenize --mb 1024
	$(BIN)/python -m benchmarks.bench_pretrain

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
