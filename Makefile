# Two commands after cloning:  `make run` (whole pipeline; demo data when dev_data/ is absent)
# and `make test` (the test suite). Both create .venv from requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test test-end-to-end bench lint docs clean-runs

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

run: $(VENV)/.installed
	$(PY) run_all.py $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not end_to_end" $(ARGS)

# every command of README.md and docs/ run as written, and the GPU check's CPU dry run (slow; CI runs it)
test-end-to-end: $(VENV)/.installed
	$(PY) -m pytest -q -m end_to_end $(ARGS)

bench: $(VENV)/.installed
	$(PY) bench/encoder.py
	$(PY) bench/scoring.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/vulture

docs: $(VENV)/.installed
	$(PY) -c "import asd.base.docs; asd.base.docs.update_docs('.')"

clean-runs:
	rm -rf runs demo_data cache
