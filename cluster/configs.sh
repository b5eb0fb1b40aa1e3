# Configuration files of containerd, its CNI, the kubelet, kube-proxy and CoreDNS (sourced by up.sh).

# Our own containerd: root, state and sockets under the state dir, the CRI plugin with runc and the
# cgroupfs driver (the kubelet's), the locally built sandbox image, no AppArmor profile (the host
# has none), network namespaces and runc's state under its state dir, and the shims in a cgroup
# of ours (containerd 1.6's runc shim writes no PID file), so down.sh finds them all. restrict_oom_score_adj: this machine's root lacks CAP_SYS_RESOURCE, so runc cannot set
# the negative oom_score_adj the kubelet asks for (-998 for sandboxes, -997 for Guaranteed pods);
# the option raises such values to containerd's own (0) instead of failing every sandbox.
write_containerd_config() {
  mkdir -p "$containerd_dir" "$state_dir/cni"
  cat > "$containerd_dir/config.toml" <<EOF
version = 2
root = "$containerd_dir/root"
state = "$containerd_dir/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$containerd_sock"
[ttrpc]
  address = "$containerd_sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        ShimCgroup = "/$shim_cgroup"
        Root = "$containerd_dir/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$state_dir/cni-bin"
    conf_dir = "$state_dir/cni"
EOF
  write_cni_config
}

# Pods without hostNetwork join the bridge network (lib.sh: pod_bridge, pod_cidr): Debian's
# containernetworking-plugins `bridge` makes a veth pair per pod, `host-local` hands out addresses
# and keeps its leases under the state dir, and `loopback` (which containerd always runs) brings up
# lo. No masquerade and no default route: a pod reaches the other pods and the host's
# pod_gateway, and nothing else ("network unreachable"). The bin dir holds just these three.
write_cni_config() {
  mkdir -p "$state_dir/cni-bin" "$state_dir/cni"
  ln -sf /usr/lib/cni/loopback /usr/lib/cni/bridge /usr/lib/cni/host-local "$state_dir/cni-bin/"
  rm -f "$state_dir/cni/10-loopback.conflist" "$state_dir/cni-bin/celery-operator-loopback"
  cat > "$state_dir/cni/10-pods.conflist.tmp" <<EOF
{"cniVersion": "0.4.0", "name": "celery-operator-pods",
 "plugins": [{"type": "bridge", "bridge": "$pod_bridge", "isGateway": true, "ipMasq": false,
              "hairpinMode": true,
              "ipam": {"type": "host-local", "dataDir": "$state_dir/cni-ipam",
                       "ranges": [[{"subnet": "$pod_cidr", "gateway": "$pod_gateway"}]],
                       "routes": [{"dst": "$pod_routes"}]}}]}
EOF
  mv "$state_dir/cni/10-pods.conflist.tmp" "$state_dir/cni/10-pods.conflist"
}

write_kubelet_config() {
  mkdir -p "$kubelet_dir" "$state_dir/pod-logs"
  cat > "$state_dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz_port
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
  x509: {clientCAFile: $pki_dir/ca.crt}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$containerd_sock
cgroupDriver: cgroupfs
cgroupRoot: /$cgroup_parent
failSwapOn: false
podLogsDir: $state_dir/pod-logs
resolvConf: /etc/resolv.conf
clusterDNS: [$dns_service_ip]
clusterDomain: $cluster_domain
# Images cannot be pulled again here: never collect them, and never evict for a full disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
shutdownGracePeriod: 0s
EOF
}

# kube-proxy in iptables mode: the nftables mode runs the `nft` command, which this machine lacks,
# while iptables 1.8.9 (its nf_tables backend) is there, and iptables is kind's default mode too.
# It changes no host setting: conntrack sizes and timeouts stay as they are (0), NodePorts answer
# on the node address only (not on the machine's external interfaces) and not on localhost (which
# would need route_localnet), and its OOM score stays 0 (root here lacks CAP_SYS_RESOURCE).
# Connections to a Service from outside the pod range are masqueraded to the bridge address.
# bindAddress is, despite its name, the node's IP (known here before the kubelet registers it).
write_kube_proxy_config() {
  cat > "$state_dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $kubeconfig}
hostnameOverride: $node_name
bindAddress: $node_ip
mode: iptables
clusterCIDR: $pod_cidr
detectLocalMode: ClusterCIDR
nodePortAddresses: [$node_ip/32]
iptables: {localhostNodePorts: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
oomScoreAdj: 0
healthzBindAddress: 127.0.0.1:$kube_proxy_healthz_port
metricsBindAddress: 127.0.0.1:$kube_proxy_metrics_port
EOF
}

# CoreDNS on the host at node_ip:53, behind the kube-dns Service: the cluster domain and the
# reverse zone of 198.18.0.0/16 from the API (the admin credentials), nothing else. Its binary has
# no forward plugin (cluster/dns/main.go): a name outside these zones is REFUSED, never sent on.
write_corefile() {
  cat > "$state_dir/Corefile" <<EOF
$cluster_domain:53 18.198.in-addr.arpa:53 {
    bind $node_ip
    errors
    health 127.0.0.1:$coredns_health_port
    ready 127.0.0.1:$coredns_ready_port
    kubernetes $cluster_domain 18.198.in-addr.arpa {
        kubeconfig $kubeconfig celery-operator-local
        pods insecure
        ttl 30
    }
    cache 30
}
EOF
}

# The kube-dns Service (the kubelet's clusterDNS) and, as it has no selector, its EndpointSlice by
# hand: the one endpoint is CoreDNS on the host.
write_dns_objects() {
  cat > "$state_dir/kube-dns.yaml" <<EOF
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  clusterIP: $dns_service_ip
  ports:
    - {name: dns, port: 53, protocol: UDP}
    - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-host
  namespace: kube-system
  labels:
    kubernetes.io/service-name: kube-dns
    endpointslice.kubernetes.io/managed-by: local-cluster.celeryoperator.dev
addressType: IPv4
endpoints:
  - addresses: [$node_ip]
    conditions: {ready: true}
    nodeName: $node_name
ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
EOF
}

# The resolver of processes on the node that should resolve names as pods do
# (cluster/with-cluster-dns.sh): the pods' search list without a namespace of their own.
write_node_resolv_conf() {
  printf 'nameserver %s\nsearch svc.%s %s\noptions ndots:5\n' "$dns_service_ip" "$cluster_domain" \
    "$cluster_domain" > "$state_dir/node-resolv.conf"
}
