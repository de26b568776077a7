# Every target creates or refreshes the virtual environment at .venv first;
# that step is skipped when .venv is newer than pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.das-installed

.PHONY: venv demo test test-fast bench gpu-check lint clean browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.demo --out demo-output

# The browser tests (tests/report/test_report_page.py) drive Debian's Chromium: installed here when missing
# (apt, as root, as on CI); where there is no apt, one line says what to install.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  command -v apt-get >/dev/null || { echo "make test: the browser tests need Chromium and its driver: install \
	Debian's chromium and chromium-driver (or your system's chromium with a matching chromedriver on PATH)" >&2; \
	  exit 1; }; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

test: $(STAMP) browser
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
