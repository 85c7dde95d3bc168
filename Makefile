# Every target sets up .venv first (once), so each is the only command a fresh machine needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
READY := $(VENV)/.ready

.PHONY: demo test lint docs

demo: $(READY)
	$(PY) -m torchrepro demo

# Two pytest workers, a test file each at a time (its module fixtures run once): most tests
# wait on the training processes they start, so two keep two cores busy.
test: $(READY)
	$(PY) -m pytest -n 2 --dist loadfile

docs: $(READY)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(READY)
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/mypy

$(READY): pyproject.toml requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(READY)
