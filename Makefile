# shopstream: `make demo` and `make test` are the two commands; each does its own set-up.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DURATION ?= 0
RATE ?= 500
PYTEST := $(PY) -m pytest

.PHONY: help bootstrap services-up services-down services-status demo test test-unit test-integration \
        test-e2e lint typecheck doctest bench bench-quick bench-deps clean

help:
	@echo "make demo [DURATION=60]   services + worker + replayed shop + live recommendations"
	@echo "make test                 lint, types, doctests, unit, integration and e2e tests"
	@echo "make services-up|services-down|services-status"
	@echo "make bench | bench-quick  benchmarks (results in benchmarks/results/)"

bootstrap:
	@bash scripts/bootstrap.sh

services-up: bootstrap
	@$(VENV)/bin/shopstream services up --persistent

services-down:
	@$(VENV)/bin/shopstream services down

services-status:
	@$(VENV)/bin/shopstream services status

demo: bootstrap
	@$(VENV)/bin/shopstream demo --duration $(DURATION) --rate $(RATE)

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: bootstrap
	$(VENV)/bin/mypy shopstream schemas streams online_models serving ops offline_training benchmarks

doctest: bootstrap
	$(PYTEST) -q --doctest-modules shopstream schemas streams online_models serving ops offline_training benchmarks/common.py benchmarks/pipeline.py

test-unit: bootstrap
	$(PYTEST) -q tests/unit

test-integration: bootstrap
	$(PYTEST) -q tests/integration

test-e2e: bootstrap
	$(PYTEST) -q tests/e2e

test: bootstrap lint typecheck doctest test-unit test-integration test-e2e

bench-deps: bootstrap
	@$(PY) -m pip install -q -c constraints.txt -e ".[dev,train,bench]"

bench: bench-deps
	$(PY) -m benchmarks.codec
	$(PY) -m benchmarks.pipeline
	$(PY) -m benchmarks.recs_quality
	$(PY) -m benchmarks.recs_latency
	$(PY) -m benchmarks.lag_monitor
	$(PY) -m benchmarks.demand_quality
	$(PY) -m benchmarks.bid_strategy
	$(PY) -m benchmarks.bid_latency
	$(PY) -m benchmarks.ctr_quality
	$(PY) -m benchmarks.care_quality
	$(PY) -m benchmarks.care_latency

bench-quick: bench-deps
	$(PY) -m benchmarks.codec --quick
	$(PY) -m benchmarks.pipeline --quick
	$(PY) -m benchmarks.recs_quality --quick
	$(PY) -m benchmarks.recs_latency --quick
	$(PY) -m benchmarks.lag_monitor --quick
	$(PY) -m benchmarks.demand_quality --quick
	$(PY) -m benchmarks.bid_strategy --quick
	$(PY) -m benchmarks.bid_latency --quick
	$(PY) -m benchmarks.ctr_quality --quick
	$(PY) -m benchmarks.care_quality --quick
	$(PY) -m benchmarks.care_latency --quick

clean:
	rm -rf .var .pytest_cache .mypy_cache .ruff_cache
