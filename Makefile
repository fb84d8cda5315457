# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is installed first and pinned: an unpinned torch pulls the CUDA build.
TORCH_VERSION ?= 2.13.0

.PHONY: demo test test-slow lint format bench docs clean-venv browser

# constraints.txt pins every other package to the versions the docs' figures were measured
# with (a fresh install that resolves newer versions can print other numbers).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e ".[dev]" -c constraints.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) -m bioreason.cli demo --out runs/demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check bioreason tests benchmarks pipelines
	$(VENV)/bin/ruff format --check bioreason tests benchmarks pipelines

# Headless Chromium for tests/test_report_browser.py (which skips without it).
SUDO := $(shell [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 \
	  || ($(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) \
	  || echo "chromium not installed: the browser test will skip"

test: $(VENV)/.installed lint browser
	$(VENV)/bin/pytest -q -m "not slow"

test-slow: $(VENV)/.installed
	$(VENV)/bin/pytest -q -m slow

format: $(VENV)/.installed
	$(VENV)/bin/ruff format bioreason tests benchmarks pipelines
	$(VENV)/bin/ruff check --fix bioreason tests benchmarks pipelines

bench: $(VENV)/.installed
	@for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# The documentation site into site/ (warnings are errors, as in CI).
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean-venv:
	rm -rf $(VENV)
