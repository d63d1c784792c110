# Everything a fresh clone needs: `make run` and `make test` bootstrap .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=

.PHONY: run test check bench soak clean browser-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $$($(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(" ".join(p["dependencies"] + p["optional-dependencies"]["test"]))')
	touch $(STAMP)

# Debian's chromium for the dashboard's browser tests (Playwright drives it; no browser is
# downloaded) and tmux for the terminal tests (tables, top); skipped when both are there
browser-deps:
	test -x /usr/bin/chromium -a -x /usr/bin/tmux || (apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium tmux)

run: $(STAMP)
	mkdir -p var
	$(PY) upq.py -c upq.cfg

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# the peers (huey, RQ, redis-py) are installed for `make bench` only, never for `make test`
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q $$($(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(" ".join(p["optional-dependencies"]["bench"]))')
	touch $(BENCH_STAMP)

# BENCH_ARGS="--n 5000" or "--quick" or "--only upq-sqlite,huey-sqlite" pass through to bench/run.py
bench: $(BENCH_STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/backlog.py

# ~10 minutes: 25 kill -9s under 8 submitting clients, on SQLite and MariaDB (tests/test_chaos.py)
soak: $(STAMP)
	UPQ_SOAK=1 $(PY) -m pytest -q tests/test_chaos.py

clean:
	rm -rf $(VENV) var .pytest_cache
