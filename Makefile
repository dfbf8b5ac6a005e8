# Two commands for a fresh machine: `make demo` and `make test` (the fast tier, at most 10 minutes
# on 2 cores). `make test-all` is everything, the docs' strict build included (at most 60 minutes
# on 2 cores): what CI runs. Each creates (or reuses) the virtual environment .venv in this
# checkout and installs the project into it first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo lint test test-all docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m simulations.federated report=true hydra.run.dir=outputs/demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The fast tier: unit tests and one real `flwr run` on loopback; `slow` marks the rest.
test: lint
	$(PY) -m pytest -q -m "not slow" --durations=15

test-all: lint docs
	$(PY) -m pytest -q --durations=30

docs: $(STAMP)
	$(PY) -m mkdocs build --strict --site-dir build/site

bench: $(STAMP)
	$(PY) benchmarks/masking.py

clean:
	rm -rf $(VENV) outputs
