# The two commands a newcomer needs: `make demo` and `make test`. Both build their own virtualenv
# with the exact versions of uv.lock (run `make lock` after changing the dependencies in
# pyproject.toml: a stale lock fails the install rather than drifting).
PYTHON ?= python3
VENV ?= .venv
# Set to install from pyproject.toml's ranges instead of the lock, e.g. the floor-version run:
# AIRFLOW_SPEC="apache-airflow==3.2.2 -c .ci/floor-constraints.txt".
AIRFLOW_SPEC ?=
# Extra pytest arguments, e.g. PYTEST_ARGS='-m "not deployment"'.
PYTEST_ARGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# uv from PATH, else installed with pip into .tools on first use. Its installs compile bytecode,
# as pip's do: uv skips it by default, and where PYTHONDONTWRITEBYTECODE is set every process
# (each test's Airflow subprocess, a task's lazy pandas import inside a benchmark's timed
# window) would otherwise compile Airflow and pandas from source again, about 1 s each time.
UV ?= $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)

.PHONY: install demo test lint typecheck unit bench lock clean

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet uv

ifeq ($(strip $(AIRFLOW_SPEC)),)
$(STAMP): pyproject.toml uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --extra dev --python $(PYTHON) --quiet --compile-bytecode
	touch $(STAMP)
else
$(STAMP): pyproject.toml | $(UV)
	rm -rf $(VENV)
	$(UV) venv --quiet --seed --python $(PYTHON) $(VENV)
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -e ".[dev]" $(AIRFLOW_SPEC)
	touch $(STAMP)
endif

lock: | $(UV)
	$(UV) lock

install: $(STAMP)

demo: install
	$(PY) example_dags/demo/run_demo.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(PY) -m pytest -p no:cacheprovider -ra $(PYTEST_ARGS)

test: lint typecheck unit

bench: install
	$(PY) benchmarks/bench_sandbox.py
	$(PY) benchmarks/bench_phone_numbers.py
	$(PY) benchmarks/bench_hashing.py
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_bulk_add.py

clean:
	rm -rf $(VENV) .venv-floor .tools .demo .mypy_cache .ruff_cache
