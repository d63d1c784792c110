# Everything a fresh clone needs: `make run` and `make test` bootstrap .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=
# pytest-xdist workers for `make test` (TEST_WORKERS=0 runs in one process)
TEST_WORKERS ?= 3

.PHONY: run test check bench soak schedule-soak long clean wheel deb deb-deps deb-check browser-deps

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
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

# the peers (huey, RQ, redis-py) are installed for `make bench` only, never for `make test`
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q $$($(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(" ".join(p["optional-dependencies"]["bench"]))')
	touch $(BENCH_STAMP)

# BENCH_ARGS="--n 5000" or "--quick" or "--only upq-sqlite,huey-sqlite" pass through to bench/run.py
bench: $(BENCH_STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/backlog.py
	$(PY) bench/features.py

# ~10 minutes: 25 kill -9s under 8 submitting clients, on SQLite and MariaDB (tests/test_chaos.py)
soak: $(STAMP)
	UPQ_SOAK=1 $(PY) -m pytest -q tests/test_chaos.py

# --- installing: wheel and Debian package (README "Installing") ---------------------------
# the Debian tools `make deb` / `make deb-check` need; only what is missing is installed
DEB_TOOLS := debhelper dpkg-dev fakeroot lintian debootstrap groff-base man-db python3-venv
deb-deps:
	@missing=$$(for p in $(DEB_TOOLS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

wheel: $(STAMP)
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .
	rm -rf build *.egg-info

# dist/upq_<version>_amd64.deb (amd64: it carries its own virtualenv). Built in a copy of the
# tree under /tmp, so dpkg-buildpackage's files stay out of the clone.
deb: deb-deps
	rm -f dist/upq_*.deb
	tmp=$$(mktemp -d /tmp/upq-deb.XXXXXX) && mkdir $$tmp/upq && \
	tar --exclude=./.git --exclude=./.venv --exclude=./var --exclude=./dist --exclude=__pycache__ \
		--exclude=.pytest_cache --exclude=.hypothesis -cf - . | tar -C $$tmp/upq -xf - && \
	(cd $$tmp/upq && dpkg-buildpackage -us -uc -b) && \
	mkdir -p dist && cp $$tmp/upq_*.deb dist/ && rm -rf $$tmp
	@ls -l dist/upq_*.deb

# build, lintian, then install into a cached Debian 12 root and run a job there (tools/deb-check)
deb-check: deb-deps
	tools/deb-check

# ~11 minutes: `every 1s` on three daemons sharing MariaDB makes exactly 600 jobs in 10 minutes
schedule-soak: $(STAMP)
	UPQ_SCHEDULE_SOAK=1 $(PY) -m pytest -q tests/test_schedule_soak.py

# the full-size variants of tests that are cut down in `make test` (UPQ_LONG=1)
long: $(STAMP)
	UPQ_LONG=1 $(PY) -m pytest -q tests/test_retention.py

clean:
	rm -rf $(VENV) var .pytest_cache build dist *.egg-info
