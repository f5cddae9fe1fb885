# qsm-bids: the two set-up commands of the README.
#   make demo   environment + demo cohort + participant and group levels + report
#   make test   environment + test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo
DEMO_ARGS ?=
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
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=15 tests

lint: venv
	$(BIN)/hadolint Dockerfile

demo: venv
	@start=$$(date +%s); set -e; \
	rm -rf $(DEMO_DIR); \
	$(BIN)/qsm-bids-simulate $(DEMO_DIR)/bids; \
	$(BIN)/qsm-bids $(DEMO_DIR)/bids $(DEMO_DIR)/derivatives participant $(DEMO_ARGS); \
	$(BIN)/qsm-bids $(DEMO_DIR)/bids $(DEMO_DIR)/derivatives group $(DEMO_ARGS); \
	end=$$(date +%s); \
	echo ""; echo "demo finished in $$((end - start)) s"; \
	echo "  dataset:           $(DEMO_DIR)/bids (ground truth in $(DEMO_DIR)/bids/derivatives/groundtruth)"; \
	echo "  participant pages: $(DEMO_DIR)/derivatives/sub-*.html"; \
	echo "  group report:      $(DEMO_DIR)/derivatives/group/report.html"

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
