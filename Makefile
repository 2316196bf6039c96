# Two set-up commands: `make run` serves the API, `make test` runs the tests.
# Each bootstraps .venv on its own.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
export CONSENT_DATA_DIR ?= var

.PHONY: run test lint bench capacity venv migrate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,generator,verification]'
	$(BIN)/python -m pip install --quiet --no-deps invisible-watermark==0.2.0 resemblyzer==0.1.4 \
		insightface==2.1 speechbrain==1.1.2
	touch $(STAMP)

venv: $(STAMP)

migrate: $(STAMP)
	$(BIN)/consent-admin migrate

run: migrate
	$(BIN)/consent-serve --host $(HOST) --port $(PORT) $(SERVE_ARGS)

# The slowest tests in every run's log: the whole suite must stay under 15 minutes, and took
# 12 on the slowest machine so far (2026-12-01).
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=20 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check consent_service policy audit generator_adapter tests bench
	$(BIN)/ruff format --check consent_service policy audit generator_adapter tests bench
	$(BIN)/mypy consent_service policy audit generator_adapter

bench: $(STAMP)
	$(BIN)/python bench/consent_check.py
	$(BIN)/python bench/audit_log.py
	$(BIN)/python bench/generation_gate.py
	$(BIN)/python bench/verification.py
	$(BIN)/python bench/provenance.py

# A few seconds: what the committed HTTP runs predict this machine holds within the goal.
capacity: $(STAMP)
	$(BIN)/python -m bench.capacity

clean:
	rm -rf $(VENV) var
