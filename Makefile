# The front door. `make run` starts the whole dev stack; `make test` and `make check` are
# what CI runs (.ci/run). Every target installs what it needs into the project itself:
# Python packages into .venv (pinned in requirements.lock), the buf CLI into node_modules.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
BUF    := node_modules/.bin/buf
CODE   := wxplatform edge tests tools bench clients/python/wxplatform_client

.PHONY: help venv run test test-busy check fmt proto bench clean

help:
	@echo "make run     start redis + WeChat simulator + core + edge (dev config in .wxplatform/)"
	@echo "make test    run the test suite"
	@echo "make test-busy [TESTS=...] [COUNT=K] [PROBE=1]  the suite (or TESTS) K times beside a busy loop per CPU"
	@echo "make check   format check, lint, types, buf lint, proto and config-table drift, layering"
	@echo "make fmt     format the code"
	@echo "make proto   regenerate clients/python from protos/"
	@echo "make bench   run the benchmarks (figures in docs/performance.md)"

$(STAMP): requirements.lock pyproject.toml clients/python/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "wxplatform needs Python >= 3.11 (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
		-e clients/python -e .
	touch $@

venv: $(STAMP)

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: $(STAMP)
	$(BIN)/wxplatform dev

test: $(STAMP)
	$(BIN)/pytest -q

# The suite as a busy CI machine runs it: one busy loop per CPU at the same priority.
# TESTS narrows it (pytest arguments), COUNT repeats each chosen test K times, PROBE=1
# prints where any Redis connection left unclosed was opened (tests/leak_probe.py).
TESTS ?=
COUNT ?= 1
PROBE ?=
test-busy: $(STAMP)
	$(if $(PROBE),WXP_LEAK_PROBE=1) $(PY) tools/busy.py -- $(BIN)/pytest -q --count=$(COUNT) $(TESTS)

check: $(STAMP) node_modules/.installed
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/ruff check $(CODE)
	$(BIN)/mypy
	cd protos && ../$(BUF) lint
	$(PY) tools/gen_protos.py --check
	$(PY) tools/config_table.py --check
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format $(CODE)
	$(BIN)/ruff check --fix $(CODE)

proto: $(STAMP) node_modules/.installed
	cd protos && ../$(BUF) lint
	$(PY) tools/gen_protos.py

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) node_modules .wxplatform .pytest_cache .mypy_cache .ruff_cache
