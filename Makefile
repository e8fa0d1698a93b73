# bitlab: `make lab` opens the notebooks, `make test` runs everything.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_LAB := $(VENV)/.lab-installed
STAMP_TEST := $(VENV)/.test-installed
STAMP_DOCS := $(VENV)/.docs-installed
# (two workers, each notebook whole on one: --dist loadfile)
NBVAL := -m pytest --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider \
	-n auto --maxprocesses=2 --dist loadfile
QEMU_TOOLS := qemu-storage-daemon qemu-system-x86_64 qemu-img qemu-io

.PHONY: lab test nbval nbval-qemu docs bench lint clean

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

$(STAMP_DOCS): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e '.[docs]'
	@touch $@

test: $(STAMP_TEST)
	$(PY) -m ruff check bitlab tests benchmarks tools notebooks
	$(PY) -m pytest -n auto --maxprocesses=4 tests
	$(MAKE) --no-print-directory nbval nbval-qemu

# The notebooks on the simulator, then the same cells on real QEMU 7.2 (BITLAB_BACKEND=qemu).
nbval: $(STAMP_TEST)
	$(PY) $(NBVAL) notebooks

nbval-qemu: $(STAMP_TEST)
	@missing=""; for t in $(QEMU_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then BITLAB_BACKEND=qemu $(PY) $(NBVAL) notebooks; \
	elif [ "$$BITLAB_REQUIRE_QEMU" = 1 ]; then echo "FAILED: BITLAB_REQUIRE_QEMU=1 but real QEMU is missing:$$missing"; exit 1; \
	else echo "SKIPPED: notebooks on real QEMU (missing:$$missing; apt-get install --no-install-recommends qemu-system-common qemu-utils qemu-system-x86)"; fi

# A static HTML site of the executed notebooks in site/ (open site/index.html, works offline).
docs: $(STAMP_DOCS)
	$(PY) tools/build_docs.py --out site notebooks

bench: $(STAMP_TEST)
	$(PY) benchmarks/run.py
	$(PY) benchmarks/fuzz.py
	$(PY) benchmarks/viz.py
	$(PY) benchmarks/widgets.py
	$(PY) benchmarks/notebooks.py

lint: $(STAMP_TEST)
	$(PY) -m ruff check bitlab tests benchmarks tools notebooks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis site test-artifacts
