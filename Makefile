# The two commands a newcomer needs: `make demo` and `make test`. Both build their own virtualenv
# with the exact versions of uv.lock (run `make lock` after changing the dependencies in
# pyproject.toml: a stale lock fails the install rather than drifting).
PYTHON ?= python3
VENV ?= .venv
# Set to install from pyproject.toml's ranges instead of the lock, e.g. the floor-version run:
# AIRFLOW_SPEC="apache-airflow==3.2.2 -c .ci/floor-constraints.txt".
AIRFLOW_SPEC ?=
# Extra pytest arguments, e.g. PYTEST_ARGS='-k sandbox' or PYTEST_ARGS='-m "not db"'.
PYTEST_ARGS ?=
# pytest-xdist workers (each with an Airflow home and metadata database of its own, tests/conftest.py).
# Three on two CPUs: many tests wait (sandbox latency, rate limits, locks), a third worker fills that.
WORKERS ?= 3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The deployment extra (Celery, Playwright, uv) on top of dev: only `make test-all` installs it.
DEPLOYMENT_STAMP := $(VENV)/.installed-deployment
PYTEST := $(PY) -m pytest -p no:cacheprovider -ra
# One worker per test file: a module's fixtures (a built wheel, a parsed DagBag) are made once.
XDIST := -n $(WORKERS) --dist loadfile
# uv from PATH, else installed with pip into .tools on first use. Its installs compile bytecode,
# as pip's do: uv skips it by default, and where PYTHONDONTWRITEBYTECODE is set every process
# (each test's Airflow subprocess, a task's lazy pandas import inside a benchmark's timed
# window) would otherwise compile Airflow and pandas from source again, about 1 s each time.
UV ?= $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)

.PHONY: install install-deployment demo test test-all lint typecheck unit unit-all deployment bench lock clean

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet uv

# The dev sync is exact (it removes what the lock's dev extra lacks, the deployment extra too), so
# it forgets the deployment stamp; the deployment sync adds to it.
ifeq ($(strip $(AIRFLOW_SPEC)),)
$(STAMP): pyproject.toml uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --extra dev --python $(PYTHON) --quiet --compile-bytecode
	rm -f $(DEPLOYMENT_STAMP)
	touch $(STAMP)

$(DEPLOYMENT_STAMP): $(STAMP)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --extra dev --extra deployment --python $(PYTHON) --quiet --compile-bytecode
	touch $(DEPLOYMENT_STAMP)
else
$(STAMP): pyproject.toml | $(UV)
	rm -rf $(VENV)
	$(UV) venv --quiet --seed --python $(PYTHON) $(VENV)
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -e ".[dev]" $(AIRFLOW_SPEC)
	touch $(STAMP)

$(DEPLOYMENT_STAMP): $(STAMP)
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -e ".[dev,deployment]" $(AIRFLOW_SPEC)
	touch $(DEPLOYMENT_STAMP)
endif

lock: | $(UV)
	$(UV) lock

install: $(STAMP)

install-deployment: $(DEPLOYMENT_STAMP)

demo: install
	$(PY) example_dags/demo/run_demo.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

# The tiers are pytest markers (pyproject.toml; tests/conftest.py applies them): db, redis, slow
# (child interpreters, whole DAG runs), deployment (a real deployment, a browser, a wheel install).
# `make test`: what a change needs most often, every tier but slow and deployment, in parallel.
unit: install
	$(PYTEST) $(XDIST) -m "not slow and not deployment" $(PYTEST_ARGS)

# Every tier but deployment, in parallel (the floor-version CI run stops here).
unit-all: install
	$(PYTEST) $(XDIST) -m "not deployment" $(PYTEST_ARGS)

# The deployment tier, one test at a time: each starts servers, a browser or a package install.
deployment: install-deployment
	$(PYTEST) -p no:xdist -m deployment $(PYTEST_ARGS)

test: lint typecheck unit

test-all: lint typecheck unit-all deployment

bench: install
	$(PY) benchmarks/bench_sandbox.py
	$(PY) benchmarks/bench_phone_numbers.py
	$(PY) benchmarks/bench_hashing.py
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_bulk_add.py

clean:
	rm -rf $(VENV) .venv-floor .tools .demo .mypy_cache .ruff_cache
