# Two commands set everything up on a fresh machine:
#   make quickstart   create .venv, install rkd, train a CPU-scale robust teacher on CIFAR-10 and evaluate it
#   make test         create .venv, install rkd with its test tools, run the test suite (what CI runs)
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
RKD := $(VENV)/bin/rkd
DATA_ROOT ?= data
QUICKSTART_N ?= 500

.PHONY: install test test-all quickstart clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

quickstart: install
	$(RKD) teacher recipes/teacher-cifar10-cpu.yaml --data-root $(DATA_ROOT) --resume
	$(RKD) eval runs/teacher-cifar10-cpu/teacher/model.safetensors --data cifar10 --data-root $(DATA_ROOT) \
		--n $(QUICKSTART_N) --attacks clean,fgsm,pgd20,cw,autoattack --eps 8/255

clean:
	rm -rf $(VENV) .pytest_cache
