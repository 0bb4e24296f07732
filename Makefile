# Quick start: `make demo` runs the main job, `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-fast golden demo venv clean-venv

venv: $(STAMP)

$(STAMP): setup.py requirements.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[test,cluster,plot]"
	touch $(STAMP)

# The test models are tiny: one intra-op thread per process beats oversubscribing CI's 2 cores.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests

# The edit loop: every module's unit tests, without the end-to-end runs and scripts marked slow.
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow" tests

# After an intended change to a method's numbers: rewrite tests/golden/*.json (commit them with the change).
golden: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests/test_golden.py --update-golden

demo: $(STAMP)
	bash scripts/demo.sh  # the scripts find .venv/bin/python themselves

clean-venv:
	rm -rf $(VENV)
