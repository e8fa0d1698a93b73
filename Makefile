# bitlab: `make lab` opens the notebooks, `make test` runs everything.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_LAB := $(VENV)/.lab-installed
STAMP_TEST := $(VENV)/.test-installed

.PHONY: lab test bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP_LAB): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e '.[lab]'
	@touch $@

$(STAMP_TEST): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,lab]'
	@touch $@

lab: $(STAMP_LAB)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

test: $(STAMP_TEST)
	$(PY) -m ruff check bitlab tests benchmarks tools
	$(PY) -m pytest tests
	$(PY) -m pytest --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider notebooks

bench: $(STAMP_TEST)
	$(PY) benchmarks/run.py
	$(PY) benchmarks/fuzz.py
	$(PY) benchmarks/viz.py
	$(PY) benchmarks/widgets.py

lint: $(STAMP_TEST)
	$(PY) -m ruff check bitlab tests benchmarks tools

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
