# Two commands for a fresh machine: `make demo` and `make test`. Each creates (or reuses) the
# virtual environment .venv in this checkout and installs the project into it first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m simulations.federated report=true hydra.run.dir=outputs/demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q --durations=15

bench: $(STAMP)
	$(PY) benchmarks/masking.py

clean:
	rm -rf $(VENV) outputs
