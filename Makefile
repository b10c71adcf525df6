# Two commands for a fresh machine: `make demo` and `make test`.
# Each creates the virtualenv in .venv if needed and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,numpy]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/redstone-ipc demo

test: $(VENV)/.installed
	$(PY) -m pytest

# Type and lint checks of the package (CI runs them before the tests).
lint: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[lint]'
	$(PY) -m mypy redstone_ipc
	$(PY) -m pyflakes redstone_ipc tests bench

bench: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
