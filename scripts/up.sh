#!/usr/bin/env bash
# The main job: a local Kubernetes cluster (or the one KUBECONFIG names), the operator installed
# in it with kubectl apply -k examples/operator (on another cluster: as a process on this
# machine), and the sample CeleryCluster with its Redis; then one task round-trips through the
# workers. Re-running it is safe and quick. `make dev` runs the operator from the working tree.
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
if [ -n "$local_cluster" ]; then
  # The operator as a user installs it: its image (built and imported by cluster/up.sh), two
  # replicas with a leader, from the overlay a user would copy (examples/operator).
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "stopping the operator process an older make up started (pid $(cat "$pidfile"))"
    kill "$(cat "$pidfile")" && rm -f "$pidfile"
  fi
  kubectl apply -k examples/operator
  # The image keeps its tag (:dev) when operator/ changes: name its build in the pod template,
  # so that a changed image rolls the pods and an unchanged one leaves them alone.
  build=$(basename "$(dirname "$(cluster/image.sh layers operator | tail -n 1)")")
  kubectl -n celery-operator patch deployment celery-operator --type merge -p \
    "{\"spec\":{\"template\":{\"metadata\":{\"annotations\":{\"celeryoperator.dev/image-build\":\"$build\"}}}}}"
  kubectl -n celery-operator rollout status deployment/celery-operator --timeout=180s
elif [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "operator already running (pid $(cat "$pidfile"))"
else
  # Another cluster (kind): no operator image there unless you load one (README), so the operator
  # runs as a process on this machine.
  setsid .venv/bin/python -m celery_operator --namespace celery-demo \
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
MSG
if [ -n "$local_cluster" ]; then
  metrics=$(kubectl -n celery-operator get service celery-operator-metrics -o jsonpath='{.spec.clusterIP}')
  cat <<MSG
  curl -s $metrics:9090/metrics | grep celery_operator_queue_backlog   # through its Service
  kubectl -n celery-operator get lease celery-operator  # which of the two pods leads
  kubectl -n celery-operator logs -f -l app.kubernetes.io/name=celery-operator --prefix
  make dev                                             # run the operator from this tree instead
  make down                                            # stop the cluster
MSG
else
  cat <<MSG
  tail -f $state/operator.log                          # the operator
  make down                                            # stop the operator and the cluster
MSG
fi
