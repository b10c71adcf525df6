# Two commands for a fresh machine: `make demo` and `make test`.
# Each creates the virtualenv in .venv if needed and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# The editable install puts the repository on sys.path with a plain .pth
# line: pyproject.toml maps the package root to "." (package-dir), so
# setuptools' default editable mode needs no import hook, which type checkers
# never run (mypy, run from a user's project, would not find the package nor
# its py.typed). tests/test_typing.py checks this.
INSTALL := $(PY) -m pip install -q -e

.PHONY: demo test lint bench soak clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(INSTALL) '.[test,numpy]'
	touch $@

$(VENV)/.lint-installed: $(VENV)/.installed
	$(INSTALL) '.[lint]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/redstone-ipc demo

test: $(VENV)/.installed
	$(PY) -m pytest

# Type and lint checks (CI runs them before the tests): the package with
# mypy and pyflakes, then a user's program (tests/typing/tour.py, every call
# of the README tour) with `mypy --strict`, run from an empty directory
# outside the repository, as a user's own project would run it.
lint: $(VENV)/.lint-installed
	$(PY) -m mypy redstone_ipc
	$(PY) -m pyflakes redstone_ipc tests bench
	@outside=$$(mktemp -d) && cd "$$outside" && \
	  "$(CURDIR)/$(PY)" -m mypy --strict --cache-dir "$(CURDIR)/.mypy_cache/outside" \
	    "$(CURDIR)/tests/typing/tour.py"; status=$$?; rm -rf "$$outside"; exit $$status

# The benchmark suite (redstone-ipc bench): `make bench BENCH_ARGS="--quick --json out.json"`.
# The other libraries it compares with are optional: one that does not install
# here is skipped (the suite says so).
BENCH_ARGS ?=
BENCH_PEERS := numpy pyzmq posix_ipc faster-fifo iceoryx2 matplotlib
bench: $(VENV)/.installed
	$(INSTALL) '.[bench,plot]' || for p in $(BENCH_PEERS); do \
		$(PY) -m pip install -q $$p || echo "bench: $$p did not install; it will be skipped"; done
	$(PY) -m redstone_ipc.benchmarks $(BENCH_ARGS)

# The long reliability run (minutes, not in CI; docs/reliability.md): 8 sender
# processes x 10^5 messages into one Port, a tenth with handles, random
# SIGKILLs; every acknowledged message delivered once, in order; fds and
# memory flat. SOAK_ARGS passes options (e.g. SOAK_ARGS="--seed 8").
soak: $(VENV)/.installed
	$(PY) tests/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
