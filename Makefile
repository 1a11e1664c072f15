# The two commands a newcomer needs: `make run` and `make test`. CI calls `make lint test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints-cpu.txt
PORT ?= 8000

.PHONY: run test test-fast test-slow lint fmt migrate worker bench bench-install clean

# llama.cpp's Python binding (the gguf extra: the GGUF check runs in llama.cpp) has no wheel on
# PyPI, so pip compiles it. docker/llama-cpp.cmake keeps that to what Gristmill calls (libllama
# and ggml's CPU backend), and a first install compiles it in the background while pip fetches
# and unpacks everything else; pip's wheel cache keeps it for later installs. CMAKE_ARGS given to
# make or in the environment come after ours (-DGGML_CUDA=on, ...).
LLAMA_CMAKE := $(CURDIR)/docker/llama-cpp.cmake
ifeq ($(findstring $(LLAMA_CMAKE),$(CMAKE_ARGS)),)
override CMAKE_ARGS := -C $(LLAMA_CMAKE) $(CMAKE_ARGS)
endif
export CMAKE_ARGS
WHEELS := $(VENV)/wheels
RUN_EXTRAS := worker,client,gptq
DEV_EXTRAS := $(RUN_EXTRAS),dev

# gptqmodel 7.6.0 (the last release that accepts torch 2.13) pins an older numpy than the worker's:
# its other needs are in the gptq extra, so it is installed without its own pins.
GPTQMODEL := gptqmodel==7.6.0

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip

# A first install compiles llama-cpp-python (both cores, a couple of minutes) while pip installs
# everything else, which mostly waits on the network and the disk: a make of its own runs the two
# at once, then the wheel goes in with the gguf extra.
$(VENV)/.installed-run: $(BIN)/python pyproject.toml constraints-cpu.txt
	@$(MAKE) --no-print-directory -j2 $(WHEELS)/.llama-cpp-python _deps EXTRAS=$(RUN_EXTRAS)
	$(PIP) --find-links $(WHEELS) -e '.[$(RUN_EXTRAS),gguf]'
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml constraints-cpu.txt
	@$(MAKE) --no-print-directory -j2 $(WHEELS)/.llama-cpp-python _deps EXTRAS=$(DEV_EXTRAS)
	$(PIP) --find-links $(WHEELS) -e '.[$(DEV_EXTRAS),gguf]'
	touch $@ $(VENV)/.installed-run

$(WHEELS)/.llama-cpp-python: $(BIN)/python constraints-cpu.txt docker/llama-cpp.cmake \
		docker/llama-cpp-no-common.cmake
	$(BIN)/pip wheel --disable-pip-version-check -q --no-deps -c constraints-cpu.txt \
	    -w $(WHEELS) llama-cpp-python
	touch $@

.PHONY: _deps
_deps:  # everything but llama-cpp-python (EXTRAS: which extras)
	$(PIP) -e '.[$(EXTRAS)]'
	$(PIP) --no-deps '$(GPTQMODEL)'

run: $(VENV)/.installed-run  ## install, then serve the embedded profile on http://127.0.0.1:8000
	$(BIN)/gristmill serve --host 127.0.0.1 --port $(PORT)

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

bench-install:  ## time `make run` (and make test's install) from a fresh clone, by phase
	$(PYTHON) benchmarks/bench_install.py --test-install

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
