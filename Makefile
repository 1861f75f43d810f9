# Two entry points for a fresh machine:
#   make run   - install into .venv and start the gateway with the embedded
#                ComfyUI simulator and local-directory storage
#   make test  - install into .venv and run lint, type checks and the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest protos bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/comfyui-grpc dev

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# Opt-in benchmarks (about 10 minutes; BENCH_ARGS=--quick for 1-2 minutes).
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m bench $(BENCH_ARGS)

protos: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) scripts/gen_protos.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
