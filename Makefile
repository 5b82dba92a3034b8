# fhir-x12-gateway: `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

.PHONY: help
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

.PHONY: install
install: $(STAMP)  ## create .venv and install the project with its dev tools

.PHONY: run
run: $(STAMP)  ## payer simulator (demo members) + gateway on 127.0.0.1:8080; prints a curl to try
	$(BIN)/fhir-x12 demo --port 8080 --payer-port 8090

.PHONY: lint
lint: $(STAMP)  ## ruff
	$(BIN)/ruff check gateway tests bench wsgi.py

.PHONY: test
test: lint  ## lint, then the whole test suite
	$(BIN)/pytest

.PHONY: golden
golden: $(STAMP)  ## rewrite fixtures/golden from the current translation (then review the diff)
	$(BIN)/pytest tests/translate/test_golden.py --update-golden -q

.PHONY: bench
bench: $(STAMP)  ## speed and memory benchmarks (results: BENCHMARKS.md)
	$(BIN)/python -m bench

.PHONY: clean
clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
