# qsm-bids: the two set-up commands of the README.
#   make demo   environment + demo cohort + participant and group levels + report
#   make test   environment + test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo
# The demo cohort: 8 ALS + 8 controls at 2 mm, with the paper's effects x6 so that 16 subjects show them
# voxelwise (at x1 the paper needed 67); 6 + 6 found the motor cortex only regionally (voxelwise min FWE p
# 0.47), 8 + 8 voxelwise (README); with DWI for the QSM-DTI comparison. Seed 1: its sixteen heads' true
# anatomy shows no group difference (truth VBM smallest FWE p 0.63 / 0.36); seed 0's did (0.012, README).
DEMO_SIM_ARGS ?= --effect-scale 6 --dwi --n-patients 8 --n-controls 8 --seed 1
# Two participant jobs at once (like a cluster job array), one thread each, the fast registration preset.
DEMO_PARTICIPANT_ARGS ?= --registration fast --n-cpus 1
# 5,000 permutations keep the demo well within 15 minutes (the paper used 20,000, the default).
DEMO_GROUP_ARGS ?= --n-permutations 5000
# Parallel test workers (pytest-xdist); the kernels use threads too, so 2 on a 2-core machine.
TEST_WORKERS ?= 2

.PHONY: all venv test test-deps demo lint clean

all: test

$(BIN)/.installed: pyproject.toml version
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --only-binary=:all: -e ".[test]"
	touch $@

venv: $(BIN)/.installed

# Headless Chromium opens the HTML reports in the tests (Debian's package; skipped when not root).
test-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the report tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "chromium not found and not root: the browser tests will be skipped"; fi; \
	fi

test: venv test-deps
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

lint: venv
	$(BIN)/ruff check qsm_bids tests benchmarks
	$(BIN)/hadolint Dockerfile

demo: venv
	@start=$$(date +%s); set -e; \
	rm -rf $(DEMO_DIR); \
	$(BIN)/qsm-bids-simulate $(DEMO_DIR)/bids $(DEMO_SIM_ARGS); \
	labels=$$(cd $(DEMO_DIR)/bids && ls -d sub-* | sed 's/sub-//'); \
	odd=$$(echo $$labels | tr ' ' '\n' | awk 'NR % 2 == 1'); even=$$(echo $$labels | tr ' ' '\n' | awk 'NR % 2 == 0'); \
	$(BIN)/qsm-bids $(DEMO_DIR)/bids $(DEMO_DIR)/derivatives participant $(DEMO_PARTICIPANT_ARGS) \
	    --participant-label $$odd & job=$$!; \
	$(BIN)/qsm-bids $(DEMO_DIR)/bids $(DEMO_DIR)/derivatives participant $(DEMO_PARTICIPANT_ARGS) \
	    --participant-label $$even --skip-bids-validation; \
	wait $$job; \
	$(BIN)/qsm-bids $(DEMO_DIR)/bids $(DEMO_DIR)/derivatives group $(DEMO_GROUP_ARGS); \
	end=$$(date +%s); \
	echo ""; echo "demo finished in $$((end - start)) s"; \
	echo "  dataset:           $(DEMO_DIR)/bids (ground truth in $(DEMO_DIR)/bids/derivatives/groundtruth)"; \
	echo "  participant pages: $(DEMO_DIR)/derivatives/sub-*.html"; \
	echo "  group report:      $(DEMO_DIR)/derivatives/group/report.html"

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
