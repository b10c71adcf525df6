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
	$(PY) examples/demo.py

test: $(VENV)/.installed
	$(PY) -m pytest

# Type and lint checks of the package (CI runs them before the tests).
lint: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[lint]'
	$(PY) -m mypy redstone_ipc
	$(PY) -m pyflakes redstone_ipc tests bench examples

# The benchmark suite (redstone-ipc bench): `make bench BENCH_ARGS="--quick --json out.json"`.
# The other libraries it compares with are optional: one that does not install
# here is skipped (the suite says so).
BENCH_ARGS ?=
BENCH_PEERS := numpy pyzmq posix_ipc faster-fifo iceoryx2 matplotlib
bench: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[bench,plot]' || for p in $(BENCH_PEERS); do \
		$(PY) -m pip install -q $$p || echo "bench: $$p did not install; it will be skipped"; done
	$(PY) -m redstone_ipc.benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
