# Shared settings and helpers of the local cluster scripts (sourced, not run).
# Every path and port lives here so up.sh, down.sh and image.sh agree on them.

cluster_src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$cluster_src/.." && pwd)
cache_dir=${CELERY_OPERATOR_CACHE:-$HOME/.cache/celery-operator}
state_dir=${CELERY_OPERATOR_CLUSTER_DIR:-/var/lib/celery-operator-cluster}

pki_dir=$state_dir/pki
run_dir=$state_dir/run        # PID files, one per process we started
log_dir=$state_dir/logs
etcd_data=$state_dir/etcd
containerd_dir=$state_dir/containerd
containerd_sock=$containerd_dir/containerd.sock
kubelet_dir=$state_dir/kubelet
kubeconfig=$state_dir/admin.kubeconfig

# Loopback only, and away from the default ports of a host's own etcd, API server or kubelet.
etcd_port=23790
etcd_peer_port=23800
apiserver_port=16443
controller_manager_port=20257
scheduler_port=20259
kubelet_port=20250
kubelet_healthz_port=20248
kube_proxy_metrics_port=20249
kube_proxy_healthz_port=20256
coredns_health_port=28080
coredns_ready_port=28181

node_name=localhost        # resolves to 127.0.0.1: the API server reaches the kubelet by this name
node_label=celeryoperator.dev/local-cluster=true
# The pod network: one Linux bridge on this machine, every pod without hostNetwork on it with an
# address from pod_cidr. The host holds pod_gateway on the bridge, so it reaches the pods and they
# reach it; the pods' only route is pod_routes, so nothing they send can leave the machine. All of
# it is RFC 2544 benchmark space (198.18.0.0/15), not a private range.
pod_bridge=celeryop0
pod_cidr=198.18.1.0/24
pod_gateway=198.18.1.1
pod_routes=198.18.0.0/15
# The node's address: the kubelet's InternalIP (so hostNetwork pods' IP), kube-proxy's node IP,
# and where the API server listens and what it advertises as the endpoint of the `kubernetes`
# Service. The bridge address: the host's processes and the pods both reach it.
node_ip=$pod_gateway
# Service IPs, made real by kube-proxy (iptables mode). up.sh routes the range to the bridge (so
# the host's own connections get as far as kube-proxy's DNAT) and rejects whatever kube-proxy did
# not translate, so a connection to an unused ClusterIP fails at once and never leaves the machine.
service_cidr=198.18.0.0/24
service_ip=198.18.0.1       # the `kubernetes` Service (the API server, port 443)
dns_service_ip=198.18.0.10  # the `kube-dns` Service: CoreDNS on the host, at node_ip:53
cluster_domain=cluster.local
# up.sh's iptables rule (OUTPUT and FORWARD) for ClusterIPs kube-proxy did not translate.
untranslated_service_rule=(-d "$service_cidr" -m comment --comment "celery-operator-cluster: no such Service"
  -j REJECT)
cgroup_parent=celery-operator  # the kubelet's cgroup root: every pod lives under it,
shim_cgroup=$cgroup_parent/shims  # and containerd's shims beside them, so down.sh finds them all

pause_image=localhost/celery-operator/pause:3.10
worker_image=localhost/celery-operator/worker:dev

# The processes up.sh starts, in start order; down.sh stops them in reverse.
components=(etcd containerd kube-apiserver kube-controller-manager kube-scheduler kube-proxy coredns
  kubelet)

# One up.sh or down.sh at a time on this machine (several engineers and test runs share it). The
# lock file sits beside the state dir, which down.sh removes; a script run by one that holds the
# lock (up.sh running down.sh or image.sh) inherits it through the environment.
take_lock() {
  [ -n "${CELERY_OPERATOR_CLUSTER_LOCKED:-}" ] && return 0
  mkdir -p "$(dirname "$state_dir")"
  exec 9>"$state_dir.lock"
  flock 9
  export CELERY_OPERATOR_CLUSTER_LOCKED=1
}

log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }

k8s_binary() { "$cluster_src/k8s/build.sh" | tail -n 1; }
coredns_binary() { "$cluster_src/dns/build.sh" | tail -n 1; }

ctr_cmd() { ctr --address "$containerd_sock" --namespace k8s.io "$@"; }

pid_file() { echo "$run_dir/$1.pid"; }

# Fields of /proc/PID/stat after the command name: 1 is the state, 20 the start time.
stat_field() { sed -E 's/^.*\) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f"$2"; }

process_start_time() { stat_field "$1" 20; }

# Alive and not a zombie: a process that exited stays a zombie until its new parent (here, the
# machine's init) reaps it, which can take seconds.
process_running() {
  local state
  state=$(stat_field "$1" 1)
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# The PID recorded for component $1, printed only while that very process is alive: the file
# holds "PID START_TIME", so a PID the kernel gave to another process since does not count.
component_pid() {
  local file=$run_dir/$1.pid pid started
  [ -s "$file" ] || return 1
  read -r pid started < "$file"
  [ -n "$pid" ] && [ "$(process_start_time "$pid")" = "$started" ] && process_running "$pid" || return 1
  echo "$pid"
}

component_alive() { component_pid "$1" >/dev/null; }

apiserver_ready() {
  curl -fsS --max-time 2 --cacert "$pki_dir/ca.crt" --cert "$pki_dir/admin.crt" \
    --key "$pki_dir/admin.key" "https://$node_ip:$apiserver_port/readyz" >/dev/null 2>&1
}

containerd_alive() { component_alive containerd && ctr --address "$containerd_sock" version >/dev/null 2>&1; }

# Polls command "$@" every half second for up to $timeout seconds (set by the caller).
wait_until() {
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}
