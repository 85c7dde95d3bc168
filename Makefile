# Every target sets up .venv first (once), so each is the only command a fresh machine needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
READY := $(VENV)/.ready

.PHONY: demo test lint docs

demo: $(READY)
	$(PY) -m torchrepro demo

test: $(READY)
	$(PY) -m pytest

docs: $(READY)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(READY)
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/mypy

$(READY): pyproject.toml requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(READY)
