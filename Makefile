# The two commands a newcomer needs:  `make up` (local cluster + demo) and `make test` (every tier).
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: deps up dev down test lint typecheck unit integration e2e bench cluster cluster-down image

deps:
	@scripts/deps.sh

up: deps
	@scripts/up.sh

# The operator from the working tree, on this machine, in place of the installed one (Ctrl-C).
dev: deps
	@scripts/dev.sh

down:
	@scripts/down.sh

test: deps
	@scripts/test.sh

lint: deps
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/lint-imports \
	  && scripts/lock.sh --check

typecheck: deps
	.venv/bin/mypy

unit: deps
	$(PY) -m pytest tests/unit

integration: deps
	$(PY) -m pytest tests/integration

e2e: deps
	$(PY) -m pytest tests/e2e

# Figures, not pass/fail: the probes' CPU, wall time and broker traffic against `inspect ping`,
# the hung-worker monitor's broker traffic per cycle and detection time for 1, 10, 50 workers, and
# the task-event metrics' memory after 100,000 events against Flower's State, and (on the local
# cluster) autoscaling reaction times against a KEDA-like baseline, and the operator process's
# CPU, RSS, threads, broker connections and /metrics series with 50 idle clusters and with 100
# worker pods, and what it keeps after they are deleted.
bench: deps
	$(PY) -m tests.bench.bench_probes
	$(PY) -m tests.bench.bench_hung
	$(PY) -m tests.bench.bench_events
	$(PY) -m pytest tests/e2e/bench_autoscale.py -q -s -p no:logging
	$(PY) -m pytest tests/e2e/bench_autoscale_rabbitmq.py -q -s -p no:logging
	$(PY) -m pytest tests/e2e/bench_many_clusters.py -q -s -p no:logging

cluster: deps
	@cluster/up.sh

cluster-down:
	@cluster/down.sh

image: deps
	@cluster/image.sh
