# Configuration files of containerd, its CNI and the kubelet (sourced by up.sh).

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
# Images cannot be pulled again here: never collect them, and never evict for a full disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
shutdownGracePeriod: 0s
EOF
}
