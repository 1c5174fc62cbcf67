# Two commands do everything (see README):
#   make demo   set up .venv, then run the main job
#   make test   set up .venv, then run the tests
# `make setup` alone builds .venv; it re-runs when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
OUT    ?= demo-output

.PHONY: setup demo test bench protos clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the `cpu` extra pins torch to the CPU wheel; GPU images install their own torch
	$(PY) -m pip install --quiet -e '.[cpu,dev]'
	touch $@

demo: setup
	OUT=$(OUT) $(PY) scripts/score_demo.py --out $(OUT)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/score_overhead.py
	$(PY) bench/worker_overlap.py

protos: setup
	$(PY) scripts/gen_protos.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
