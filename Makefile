# Two commands after cloning:  `make run` (whole pipeline; demo data when dev_data/ is absent)
# and `make test` (the test suite). Both create .venv from requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test bench lint readme clean-runs

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

run: $(VENV)/.installed
	$(PY) run_all.py $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q $(ARGS)

bench: $(VENV)/.installed
	$(PY) bench/encoder.py
	$(PY) bench/scoring.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/vulture

readme: $(VENV)/.installed
	$(PY) -c "import asd.docs; asd.docs.update_readme('README.md')"

clean-runs:
	rm -rf runs demo_data cache
