# The two commands a newcomer needs: `make demo` and `make test`. Both set up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test lint bench demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[native,dev]'
	touch $(STAMP)

LINTED := node-core relay signaling tests bench

test: setup
	$(PY) -m ruff check $(LINTED)
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check $(LINTED)

bench: setup
	$(PY) bench/core.py

demo: setup
	$(VENV)/bin/zmesh demo

clean:
	rm -rf $(VENV) build *.egg-info node-core/*.egg-info
