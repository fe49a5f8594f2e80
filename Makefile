# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= 2

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) tests

demo: setup
	$(PY) -m jaxloop.demo

bench: setup
	$(PY) -m benchmarks run --suite quick --out benchmarks/results/latest.jsonl

clean:
	rm -rf $(VENV) runs .pytest_cache
