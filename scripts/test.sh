#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, strict typing, then every tier in one pytest run
# (unit, integration against real Redis and Celery, e2e against a real Kubernetes cluster,
# started here when KUBECONFIG is not set).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== ruff" && .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy (strict)" && .venv/bin/mypy
echo "== import layers" && .venv/bin/lint-imports --no-cache
echo "== lock (uv.lock against pyproject.toml, the images' lists against uv.lock)" &&
  scripts/lock.sh --check
if [ -z "${KUBECONFIG:-}" ]; then
  # The slow, cached builds (Kubernetes from Go modules, the worker image) happen here, not
  # inside a test's timeout; the e2e fixtures then start the cluster in seconds.
  echo "== building the local cluster's components and images (cached)"
  cluster/k8s/build.sh >/dev/null
  cluster/image.sh >/dev/null
fi
echo "== pytest: unit, integration, e2e"
exec .venv/bin/python -m pytest tests/unit tests/integration tests/e2e "$@"
