#!/usr/bin/env bash
# The main job: a local Kubernetes cluster (or the one KUBECONFIG names), the CRD, the operator
# (as a process on this machine) and the sample CeleryCluster with its Redis; then one task
# round-trips through the workers. Re-running it is safe and quick.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${CELERY_OPERATOR_CACHE:-$HOME/.cache/celery-operator}/demo
mkdir -p "$state"

if [ -z "${KUBECONFIG:-}" ]; then
  line=$(cluster/up.sh | tail -n 1)
  export "${line?}"
fi
echo "using KUBECONFIG=$KUBECONFIG"
sample=examples/local  # the same on the local cluster and on kind
local_cluster=$(kubectl get nodes -l celeryoperator.dev/local-cluster=true -o name)

kubectl apply -f crds/celeryoperator.dev_celeryclusters.yaml
kubectl wait --for condition=Established --timeout=60s crd/celeryclusters.celeryoperator.dev

pidfile=$state/operator.pid
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "operator already running (pid $(cat "$pidfile"))"
else
  # On the local cluster the operator runs on its node, resolving names through the cluster's DNS
  # as it would in a pod (the sample's broker URL names the Redis Service).
  resolver=()
  [ -z "$local_cluster" ] || resolver=(cluster/with-cluster-dns.sh)
  setsid "${resolver[@]}" .venv/bin/python -m celery_operator --namespace celery-demo \
    --liveness-port 8089 >"$state/operator.log" 2>&1 < /dev/null &
  echo $! >"$pidfile"
  echo "operator started (pid $!), log: $state/operator.log"
fi

# The sample's Redis moved to its own namespace (celery-demo-broker): an older demo's Redis would
# hold its port.
kubectl -n celery-demo delete deployment redis --ignore-not-found
kubectl apply -k "$sample"
echo "waiting for the sample CeleryCluster to become Available…"
kubectl -n celery-demo wait --for=jsonpath='{.status.phase}'=Available --timeout=300s celerycluster/demo
kubectl -n celery-demo get celeryclusters,deployments,statefulsets,pods

# This machine is the local cluster's node: it reaches the Redis Service's cluster IP (kube-proxy).
# Elsewhere (kind), forward a port first: kubectl -n celery-demo-broker port-forward svc/redis 6379
broker=redis://127.0.0.1:6379/0
if [ -n "$local_cluster" ]; then
  broker=redis://$(kubectl -n celery-demo-broker get service redis -o jsonpath='{.spec.clusterIP}'):6379/0
  .venv/bin/python examples/submit.py --broker "$broker" add 20 22
fi
cat <<MSG

The sample runs. Next:
  export KUBECONFIG=$KUBECONFIG
  kubectl -n celery-demo get celeryclusters            # workers, beat, backlog, status
  .venv/bin/python examples/submit.py --broker $broker --count 20 sleep 2
  kubectl -n celery-demo logs -f deploy/demo-worker-default   # watch them run
  .venv/bin/python examples/submit.py --broker $broker --queue slow --count 6 sleep 20
  kubectl -n celery-demo get celeryclusters -w         # the slow pool scales 0 → 3 → 0
  curl -s 127.0.0.1:9090/metrics | grep celery_operator_queue_backlog
  tail -f $state/operator.log                          # the operator
  make down                                            # stop the operator and the cluster
MSG
