# aidc: two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install demo test test-fast bench lint system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

## the whole simulated site (simulators, collectors, model, alerts, web) on the embedded store
demo: install
	$(VENV)/bin/aidc demo $(ARGS)

## servers and browser the tests use (Debian packages; installed when run as root)
system-deps:
	@sh tests/system-deps.sh

## everything: unit, protocol (real servers), storage (real influxd), browser (chromium)
test: install system-deps
	$(PY) -m pytest -q --webdriver Chrome --headless $(ARGS)

lint: install
	$(VENV)/bin/ruff check aidc collectors models dashboards alerts simulators tests benchmarks

## benchmarks print figures + ratios against a baseline and write benchmarks/results/*.json
bench: install
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) data .pytest_cache
