#!/usr/bin/env bash
# The operator from the working tree, as a process on this machine, for development: `make up`
# first. The installed operator (two pods in celery-operator) is scaled to zero meanwhile, so that
# only one of them reconciles the sample, and scaled back to two when this one stops (Ctrl-C).
# On the local cluster it resolves names through the cluster's DNS, as a pod does.
#   scripts/dev.sh [OPERATOR FLAGS...]     (default: --namespace celery-demo)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${KUBECONFIG:-}" ]; then
  line=$(cluster/up.sh | tail -n 1)
  export "${line?}"
fi
resolver=()
if kubectl get nodes -l celeryoperator.dev/local-cluster=true -o name | grep -q .; then
  resolver=(cluster/with-cluster-dns.sh)
fi
installed=$(kubectl -n celery-operator get deployment celery-operator -o name 2>/dev/null || true)
if [ -n "$installed" ]; then
  kubectl -n celery-operator scale deployment celery-operator --replicas=0
  kubectl -n celery-operator wait --for=delete pod -l app.kubernetes.io/name=celery-operator \
    --timeout=60s
  trap 'kubectl -n celery-operator scale deployment celery-operator --replicas=2' EXIT
fi
[ $# -gt 0 ] || set -- --namespace celery-demo
"${resolver[@]}" .venv/bin/python -m celery_operator --liveness-port 8089 "$@"
