#!/usr/bin/env bash
# Stops what `make up` started: the operator process (where it ran one), then the local cluster
# (the installed operator goes with it).
set -euo pipefail
cd "$(dirname "$0")/.."
pidfile=${CELERY_OPERATOR_CACHE:-$HOME/.cache/celery-operator}/demo/operator.pid
if [ -f "$pidfile" ]; then
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
fi
cluster/down.sh
