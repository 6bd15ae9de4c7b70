# Two commands set everything up on a fresh machine:
#   make quickstart   create .venv, install rkd, run recipes/quickstart.yaml: teacher, distill, INT8, verify (CIFAR-10)
#   make test         create .venv, install rkd with its test tools, run the test suite (what CI runs)
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
RKD := $(VENV)/bin/rkd
DATA_ROOT ?= data

.PHONY: install test test-all quickstart clean gpu-check

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

quickstart: install
	$(RKD) run recipes/quickstart.yaml --data-root $(DATA_ROOT) --resume

# On a GPU machine: rkd's CUDA path measured in about 5 minutes (benchmarks/gpu_check.py; writes
# benchmarks/results/gpu_check/). GPU_CHECK_ARGS="--wheels DIR" installs wheels fetched beforehand with
# `benchmarks/gpu_check.py --fetch-wheels DIR`; "--dry-run" runs the same code at toy sizes on the CPU.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py --out benchmarks/results/gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
