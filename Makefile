# The two commands a newcomer needs: `make demo` and `make test`. Both build their own virtualenv.
PYTHON ?= python3
VENV ?= .venv
# Extra pip requirements, e.g. AIRFLOW_SPEC="apache-airflow==3.2.2" for the floor-version run.
AIRFLOW_SPEC ?=
# Extra pytest arguments, e.g. PYTEST_ARGS='-m "not deployment"'.
PYTEST_ARGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]" $(AIRFLOW_SPEC)
	touch $(STAMP)

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
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_bulk_add.py

clean:
	rm -rf $(VENV) .venv-floor .demo .mypy_cache .ruff_cache
