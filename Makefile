# skewless: the user's door. Every target installs what it needs first (via `setup`, idempotent).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SKEWLESS := $(VENV)/bin/skewless
PYTEST_ARGS ?=

.PHONY: setup up down status test test-unit demo submit jobs backfill materialize plan parity test-faults bench clean

setup:            ## install apt packages, the venv, pinned JVM jars and test images (idempotent)
	@bash infra/setup.sh

up: setup         ## start Kafka (KRaft), a Flink session cluster and Redis on 127.0.0.1; wait until healthy [TOPOLOGY=cluster]
	@$(SKEWLESS) stack up $(if $(TOPOLOGY),--topology $(TOPOLOGY),)

down:             ## stop exactly what `make up` started (by pid), whatever its topology
	@$(SKEWLESS) stack down

status:           ## what runs, where, and its memory
	@$(SKEWLESS) stack status

test: setup       ## unit + integration tests against real services (what CI runs)
	@bash infra/run-tests.sh $(PYTEST_ARGS)

test-unit: setup  ## unit tests only: no JVM, no services
	@bash infra/run-tests.sh -m "not integration" $(PYTEST_ARGS)

plan: setup       ## validate feature_defs/ and print what streaming and batch compute
	@$(SKEWLESS) plan

submit: setup     ## submit a compiled PyFlink job to the `make up` cluster: make submit JOB=<view|all> [REPLACE=1]
	@$(SKEWLESS) submit $(or $(JOB),all) $(if $(REPLACE),--replace,)

backfill: setup   ## spark-submit a backfill: make backfill START=YYYY-MM-DD END=YYYY-MM-DD [VIEW=v]
	@$(SKEWLESS) backfill --start "$(START)" --end "$(END)" $(if $(VIEW),--view $(VIEW),)

materialize: setup ## load a batch run into Redis: make materialize VIEW=v DAY=YYYY-MM-DD
	@$(SKEWLESS) materialize $(if $(VIEW),--view $(VIEW),) $(if $(DAY),--day $(DAY),)

demo: setup       ## the main job end to end on built-in sample data
	@$(SKEWLESS) demo

parity: setup     ## the consistency proof: make parity [SEED=n] [TOPOLOGY=cluster: on the running `make up TOPOLOGY=cluster`]
	@$(SKEWLESS) parity $(if $(SEED),--seed $(SEED),) $(if $(TOPOLOGY),--topology $(TOPOLOGY),)

test-faults: setup ## fault tests, each module on a stack of its own (single node, or the cluster topology: tests/faults/test_cluster_online_faults.py); outside `make test`
	@bash infra/run-tests.sh -m slow $(PYTEST_ARGS)

bench: setup      ## benchmarks: prints a table, writes bench/results/latest.json
	@$(PY) -m bench

clean:            ## remove runtime state (not the venv or the jar cache)
	@$(SKEWLESS) stack down >/dev/null 2>&1 || true
	rm -rf .skewless
