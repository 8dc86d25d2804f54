# Set-up is incremental: each step reruns only when its inputs change.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint bench clean data

run: $(VENV)/.installed data
	$(VENV)/bin/retain run examples/split_fashion_mnist.yaml

test: $(VENV)/.installed data
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest

bench: $(VENV)/.installed data
	$(PY) benchmarks/class_il.py --out benchmarks/results/class_il.json --results benchmarks/RESULTS.md
	$(PY) benchmarks/online.py --out benchmarks/results/online.json --results benchmarks/ONLINE.md

data: $(FASHION)

$(FASHION):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist

$(VENV)/.installed: pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) runs benchmarks/out
