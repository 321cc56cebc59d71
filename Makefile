# aidc: two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

NODE_PEERS := tests/interop/opcua

.PHONY: install demo test reliability bench lint system-deps plotly-bundle clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	rm -f $(VENV)/.installed-*; touch $@

## byte-compiled as pip compiles an installed package (an editable install is not): where
## PYTHONDONTWRITEBYTECODE is set, each command compiled its modules again (0.1-0.3 s)
install: $(STAMP)
	$(PY) -m compileall -q aidc collectors models alerts dashboards simulators benchmarks

## the whole simulated site (simulators, collectors, model, alerts, web) on the embedded store
demo: install
	$(VENV)/bin/aidc demo $(ARGS)

## servers and browser the tests use (Debian packages; installed when run as root)
system-deps:
	@sh tests/system-deps.sh

## node-opcua, a third-party OPC-UA peer for the interop tests (npm, pinned by its lockfile)
$(NODE_PEERS)/node_modules/.installed: $(NODE_PEERS)/package-lock.json
	npm ci --prefix $(NODE_PEERS) --no-audit --no-fund --loglevel=error
	touch $@

## the console's plotly.js (only the trace types it draws), committed in dashboards/assets:
## rebuild it when plotly (the Python package) moves to another plotly.js
plotly-bundle:
	npm ci --prefix dashboards/plotly --no-audit --no-fund --loglevel=error
	npm run --prefix dashboards/plotly build

## everything: unit, protocol (real servers), storage (real influxd), browser (chromium)
test: install system-deps $(NODE_PEERS)/node_modules/.installed
	$(PY) -m pytest -q --webdriver Chrome --headless $(ARGS)

## the reliability table (losses, crashes, 500s, leaks through faults and fuzz), written to
## benchmarks/results/reliability.json; these tests are also part of `make test`
reliability: install system-deps
	$(PY) -m pytest -q -m reliability --reliability-json benchmarks/results/reliability.json tests $(ARGS)

lint: install
	$(VENV)/bin/ruff check aidc collectors models dashboards alerts simulators tests benchmarks

## benchmarks print figures + ratios against a baseline and write benchmarks/results/*.json
bench: install
	@AIDC_BENCH_DEPS=1 sh tests/system-deps.sh
	@start=$$(date +%s); \
	for b in model collectors versus alerts alert_latency startup dashboard storage sustained; do \
		echo "== $$b"; t=$$(date +%s); $(PY) -m benchmarks.$$b || exit 1; \
		echo "== $$b took $$(( $$(date +%s) - t )) s"; done; \
	echo "== every target (the benchmarks took $$(( ($$(date +%s) - start + 30) / 60 )) min)"
	@$(PY) -m benchmarks.summary

clean:
	rm -rf $(VENV) data .pytest_cache
