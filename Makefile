# One command to install, one to run the default repair, one to test.
VENV ?= .venv
PYTHON ?= python3
# cpu: onnxruntime; gpu: onnxruntime-gpu (never both in one environment)
EXTRAS ?= cpu,dev
# On CPU hosts the pinned CPU wheel of torch must come first: a plain `torch` pulls CUDA.
TORCH ?= torch==2.13.0

.PHONY: install run test test-all lint bench

install:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet "$(TORCH)"
	$(VENV)/bin/pip install --quiet -e ".[$(EXTRAS)]"

run:
	$(VENV)/bin/mudjack run

test:
	$(VENV)/bin/pytest -m "not slow"

test-all:
	$(VENV)/bin/pytest

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile

bench:
	$(VENV)/bin/python bench/onnx_latency.py --demo
