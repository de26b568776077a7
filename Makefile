# Every target creates or refreshes the virtual environment at .venv first;
# that step is skipped when .venv is newer than pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.das-installed

.PHONY: venv demo test test-fast bench gpu-check lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not integration"

bench: $(STAMP)
	$(PY) -m bench.run

# On a machine with a GPU (under 5 minutes): one table, recorded in bench/results.json with the card's name.
gpu-check: $(STAMP)
	$(PY) -m bench.gpu --record

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo-output .pytest_cache
