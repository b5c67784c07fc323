# The two commands of the README's Quick start: `make demo` and `make test`.
# Each creates .venv when missing and installs the pinned set (constraints.txt).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JOBS   ?= 2

.PHONY: demo test test-slow bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/moeforge demo --config configs/tiny.toml

# `slow` marks wide random sweeps (kept out of the 25-minute suite); `make test-slow` runs them.
test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -m "not slow" tests

test-slow: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -m slow tests

bench: $(STAMP)
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
