# Two commands set everything up on a fresh machine:
#   make quickstart   create .venv, install rkd, run recipes/quickstart.yaml: teacher, distill, INT8, verify (CIFAR-10)
#   make test         create .venv, install rkd with its test tools, run the test suite (what CI runs)
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
RKD := $(VENV)/bin/rkd
DATA_ROOT ?= data

.PHONY: install test test-all quickstart clean gpu-check published-code

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
# The published RSLAD and ARD code, timed beside rkd's steps, is not part of this project: `make published-code`
# clones zibojia/RSLAD and goldblum/AdversariallyRobustDistillation into $(PUBLISHED) (needs a network; copy the
# folder to the GPU machine with the repository), and gpu-check passes each checkout found there
# (--published-rslad, --published-ard); without them those steps are left out.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
PUBLISHED ?= build/published
PUBLISHED_ARGS = $(if $(wildcard $(PUBLISHED)/rslad/rslad_loss.py),--published-rslad $(PUBLISHED)/rslad) \
	$(if $(wildcard $(PUBLISHED)/ard/main.py),--published-ard $(PUBLISHED)/ard)
gpu-check:
	$(if $(strip $(PUBLISHED_ARGS)),,@echo "no published code in $(PUBLISHED) (make published-code): its steps are left out")
	$(GPU_PY) benchmarks/gpu_check.py --out benchmarks/results/gpu_check $(PUBLISHED_ARGS) $(GPU_CHECK_ARGS)

published-code:
	test -f $(PUBLISHED)/rslad/rslad_loss.py || git clone --depth 1 https://github.com/zibojia/RSLAD $(PUBLISHED)/rslad
	test -f $(PUBLISHED)/ard/main.py || \
		git clone --depth 1 https://github.com/goldblum/AdversariallyRobustDistillation $(PUBLISHED)/ard

clean:
	rm -rf $(VENV) .pytest_cache
