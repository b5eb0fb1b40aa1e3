#!/usr/bin/env bash
# Starts the local single-node Kubernetes (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy, CoreDNS, containerd and a kubelet running real pods) on this
# machine's loopback and the pod bridge, and prints `KUBECONFIG=/abs/path` as its last line. A
# healthy running cluster is reused; a crashed or half-started one is torn down by down.sh and
# started afresh. See cluster/README.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$cluster_src/pki.sh"
source "$cluster_src/configs.sh"

# Every recorded process alive and the API server ready.
cluster_healthy() {
  local name
  [ -f "$kubeconfig" ] || return 1
  for name in "${components[@]}"; do component_alive "$name" || return 1; done
  apiserver_ready
}

# start NAME COMMAND...: runs it in its own session, output to logs/NAME.log, without our lock's
# file descriptor, and records "PID START_TIME" so down.sh never signals a recycled PID.
start() {
  local name=$1 && shift
  setsid "$@" >>"$log_dir/$name.log" 2>&1 </dev/null 9>&- &
  echo "$! $(process_start_time $!)" > "$(pid_file "$name")"
}

start_etcd() {
  start etcd etcd --name local --data-dir "$etcd_data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "local=http://127.0.0.1:$etcd_peer_port" --logger zap
}

start_containerd() { start containerd containerd --config "$containerd_dir/config.toml"; }

start_apiserver() {
  start kube-apiserver "$k8s" kube-apiserver \
    --bind-address="$node_ip" --secure-port="$apiserver_port" --advertise-address="$node_ip" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --tls-cert-file="$pki_dir/apiserver.crt" --tls-private-key-file="$pki_dir/apiserver.key" \
    --client-ca-file="$pki_dir/ca.crt" \
    --service-account-issuer="https://kubernetes.default.svc.$cluster_domain" \
    --service-account-key-file="$pki_dir/sa.pub" \
    --service-account-signing-key-file="$pki_dir/sa.key" \
    --service-cluster-ip-range="$service_cidr" \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --kubelet-preferred-address-types=Hostname \
    --kubelet-client-certificate="$pki_dir/admin.crt" --kubelet-client-key="$pki_dir/admin.key" \
    --profiling=false
}

start_controller_manager() {
  start kube-controller-manager "$k8s" kube-controller-manager \
    --kubeconfig="$kubeconfig" --bind-address=127.0.0.1 --secure-port="$controller_manager_port" \
    --leader-elect=false --controllers='*' --use-service-account-credentials \
    --service-account-private-key-file="$pki_dir/sa.key" --root-ca-file="$pki_dir/ca.crt" \
    --cluster-signing-cert-file="$pki_dir/ca.crt" --cluster-signing-key-file="$pki_dir/ca.key" \
    --profiling=false
}

start_scheduler() {
  start kube-scheduler "$k8s" kube-scheduler --kubeconfig="$kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$scheduler_port" --leader-elect=false --profiling=false
}

start_kubelet() {
  start kubelet "$k8s" kubelet --config="$state_dir/kubelet.yaml" --kubeconfig="$kubeconfig" \
    --root-dir="$kubelet_dir" --hostname-override="$node_name" --node-ip="$node_ip" \
    --node-labels="$node_label"
}

start_kube_proxy() { start kube-proxy "$k8s" kube-proxy --config="$state_dir/kube-proxy.yaml"; }

start_coredns() { start coredns "$coredns" -conf "$state_dir/Corefile"; }

# The kubelet's cgroup root and the shims' cgroup must exist in every v1 hierarchy; cpuset needs
# its CPUs and memory nodes filled in before any process can join.
make_cgroups() {
  local hierarchy group cpuset=/sys/fs/cgroup/cpuset
  for hierarchy in /sys/fs/cgroup/*/; do
    [ -L "${hierarchy%/}" ] || mkdir -p "$hierarchy$shim_cgroup"
  done
  [ -d "$cpuset" ] || return 0
  for group in "$cgroup_parent" "$shim_cgroup"; do
    cat "$cpuset/cpuset.cpus" > "$cpuset/$group/cpuset.cpus"
    cat "$cpuset/cpuset.mems" > "$cpuset/$group/cpuset.mems"
  done
}

# The kubelet sets vm.overcommit_memory, kernel.panic and kernel.panic_on_oops, and
# enable_service_network sets the other two; down.sh puts the host's values back from this file.
save_host_settings() {
  sysctl -e vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward \
    net.bridge.bridge-nf-call-iptables | tr -d ' ' > "$state_dir/sysctl.saved"
  cat /proc/sys/kernel/random/boot_id > "$state_dir/boot_id"
}

# A Service reached from a pod on the same bridge: the host DNATs and forwards the request, and the
# reply, bridged straight from pod to pod, must pass iptables too (br_netfilter) to be translated
# back.
load_bridge_netfilter() {
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter ||
    die "kube-proxy needs the br_netfilter module (/proc/sys/net/bridge is missing)"
}

enable_service_network() {
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
}

# The host's own connections to a ClusterIP need a route, or they fail before kube-proxy's DNAT
# (nat OUTPUT) sees them; the range goes to the bridge, from the node address. Whatever kube-proxy
# did not translate is rejected (the filter table runs after nat: a translated connection has a
# pod's or the node's address by then), so an unused ClusterIP fails at once, from the host
# (OUTPUT) and from pods (FORWARD), and nothing goes anywhere when kube-proxy is down.
route_service_range() {
  local chain
  ip route replace "$service_cidr" dev "$pod_bridge" src "$node_ip"
  for chain in OUTPUT FORWARD; do
    iptables -C "$chain" "${untranslated_service_rule[@]}" 2>/dev/null ||
      iptables -A "$chain" "${untranslated_service_rule[@]}"
  done
}

# The pods' bridge with the host's address on it, made before the first pod (the bridge plugin
# would make it then) so that a broker on this machine can listen on pod_gateway from the start.
make_pod_bridge() {
  ip link show "$pod_bridge" >/dev/null 2>&1 || ip link add "$pod_bridge" type bridge
  ip addr replace "$pod_gateway/${pod_cidr#*/}" dev "$pod_bridge"
  ip link set "$pod_bridge" up
}

prepare_state() {
  mkdir -p "$state_dir" "$run_dir" "$log_dir"
  load_bridge_netfilter
  save_host_settings
  make_pki
  write_kubeconfig
  write_containerd_config
  write_kubelet_config
  write_kube_proxy_config
  write_corefile
  write_dns_objects
  write_node_resolv_conf
  make_cgroups
  make_pod_bridge
  enable_service_network
  route_service_range
}

kubectl() { "$k8s" kubectl --kubeconfig="$kubeconfig" "$@"; }

node_ready() {
  [ "$(kubectl get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

default_service_account() { kubectl get serviceaccount default -n default >/dev/null 2>&1; }

etcd_ready() { curl -fsS --max-time 1 "http://127.0.0.1:$etcd_port/health" >/dev/null 2>&1; }

# Healthy once its first sync of the iptables rules is done.
kube_proxy_ready() { curl -fsS --max-time 1 "http://127.0.0.1:$kube_proxy_healthz_port/healthz" >/dev/null 2>&1; }

# Ready once the kubernetes plugin has listed the Services.
coredns_ready() { curl -fsS --max-time 1 "http://127.0.0.1:$coredns_ready_port/ready" >/dev/null 2>&1; }

# The API server makes the kube-system namespace shortly after it is ready.
dns_objects_applied() { kubectl apply -f "$state_dir/kube-dns.yaml" >/dev/null 2>&1; }

# await WHAT TIMEOUT CHECK...: polls CHECK, and fails with the logs' tails when it never passes.
await() {
  local what=$1
  timeout=$2 && shift 2
  wait_until "$@" || fail "$what not ready after ${timeout}s"
}

fail() {
  log "$*"
  local name
  for name in "${components[@]}"; do
    [ -f "$log_dir/$name.log" ] || continue
    component_alive "$name" && log "--- $name (running): last lines" || log "--- $name (NOT running): last lines"
    tail -n 15 "$log_dir/$name.log" >&2
  done
  log "logs are in $log_dir"
  exit 1
}

start_cluster() {
  k8s=$(k8s_binary) || die "building the Kubernetes binary failed (cluster/k8s/build.sh)"
  coredns=$(coredns_binary) || die "building CoreDNS failed (cluster/dns/build.sh)"
  prepare_state
  start_etcd
  start_containerd
  await etcd 30 etcd_ready
  start_apiserver
  await containerd 30 containerd_alive
  "$cluster_src/image.sh" import || fail "image import failed"
  await kube-apiserver 60 apiserver_ready
  start_controller_manager
  start_scheduler
  start_kube_proxy
  start_coredns
  start_kubelet
  await "the kube-dns Service" 30 dns_objects_applied
  await "node $node_name" 90 node_ready
  await kube-proxy 30 kube_proxy_ready
  await CoreDNS 30 coredns_ready
  await "default service account" 30 default_service_account
  kubectl label node "$node_name" "$node_label" --overwrite >/dev/null
}

main() {
  take_lock
  if cluster_healthy; then
    log "reusing the running cluster in $state_dir"
    # A cluster started by an older checkout gets this one's pod network (containerd rereads
    # its CNI directory; pods already running keep the network they started with).
    make_pod_bridge
    write_cni_config
    "$cluster_src/image.sh" import
  else
    if [ -d "$state_dir" ]; then
      log "found a stopped or half-started cluster in $state_dir: cleaning it up first"
      "$cluster_src/down.sh"
    fi
    start_cluster
    log "up; logs in $log_dir"
  fi
  echo "KUBECONFIG=$kubeconfig"
}

main "$@"
