#!/usr/bin/env bash
# Stops the local cluster and removes its state: every process up.sh started (by its PID file,
# never by name), the pods' containers (by containerd's init.pid files) and whatever else runs in
# our cgroups (containers, containerd's shims), every mount under the state dir, our cgroups, the
# shim sockets, the service range's route and iptables rules, kube-proxy's and the kubelet's
# iptables chains, the pod bridge; then puts back the host settings the cluster changed.
# Safe to run twice.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL.
stop_pid() {
  local pid=$1 deadline=$((SECONDS + 10))
  kill -TERM "$pid" 2>/dev/null || return 0
  while process_running "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  ! process_running "$pid" || kill -KILL "$pid" 2>/dev/null || true
}

stop_component() {
  local pid
  pid=$(component_pid "$1") || return 0
  stop_pid "$pid"
}

task_dirs() { echo "$containerd_dir"/state/io.containerd.runtime.v2.task/*/*/; }

# containerd writes init.pid, a container's first process, under its state dir. After a reboot
# those numbers mean other processes: only trust them on the same boot.
same_boot() { [ "$(cat "$state_dir/boot_id" 2>/dev/null)" = "$(cat /proc/sys/kernel/random/boot_id)" ]; }

kill_container_inits() {
  local dir
  same_boot || return 0
  for dir in $(task_dirs); do
    [ -s "$dir/init.pid" ] && kill -KILL "$(cat "$dir/init.pid")" 2>/dev/null || true
  done
}

# Whatever still runs in our cgroup tree is a pod's process or a containerd shim: kill it by
# membership.
kill_cgroup_members() {
  local pid
  for pid in $(cgroup_members | sort -u); do kill -KILL "$pid" 2>/dev/null || true; done
}

cgroup_members() {
  local procs
  for procs in /sys/fs/cgroup/*/"$cgroup_parent"/**/cgroup.procs; do cat "$procs" 2>/dev/null; done
}

no_cgroup_members() { [ -z "$(cgroup_members)" ]; }

# A cgroup can be removed once the killed processes in it have exited.
remove_cgroups() {
  local dir timeout=10
  wait_until no_cgroup_members || die "processes left in our cgroups: $(cgroup_members | tr '\n' ' ')"
  for dir in $(find /sys/fs/cgroup/*/"$cgroup_parent" -depth -type d 2>/dev/null); do
    rmdir "$dir" 2>/dev/null || true
  done
}

# Mount points under the state dir, deepest first (mountinfo escapes spaces as \040).
mounts_under_state() {
  awk -v root="$state_dir" '$5 == root || index($5, root "/") == 1 { print $5 }' /proc/self/mountinfo |
    awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2- | uniq
}

unmount_state() {
  local round mount
  for round in 1 2 3 4 5; do
    [ -n "$(mounts_under_state)" ] || return 0
    for mount in $(mounts_under_state); do
      umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null || true
    done
  done
  [ -z "$(mounts_under_state)" ] || die "still mounted under $state_dir: $(mounts_under_state | tr '\n' ' ')"
}

# IPTABLES TABLE: an iptables-restore script that deletes kube-proxy's and the kubelet's chains
# (all named KUBE-*), the rules of the built-in chains that jump to them, and up.sh's rules.
iptables_cleanup() {
  local rules
  rules=$("$1" -t "$2" -S 2>/dev/null) || return 0
  echo "*$2"
  grep -E '^-A [A-Z]+ .*(-j KUBE-|--comment "?celery-operator-cluster)' <<<"$rules" |
    grep -v '^-A KUBE-' | sed 's/^-A /-D /' || true
  sed -n 's/^-N \(KUBE-.*\)/-F \1/p' <<<"$rules"
  sed -n 's/^-N \(KUBE-.*\)/-X \1/p' <<<"$rules"
  echo COMMIT
}

# IPv4 and IPv6 (kube-proxy runs both where the machine has both); the tables' other rules stay.
remove_iptables_rules() {
  local command table
  for command in iptables ip6tables; do
    for table in filter nat mangle; do
      iptables_cleanup "$command" "$table" | "$command-restore" --noflush ||
        log "could not clean up $command's $table table"
    done
  done
}

restore_host_settings() {
  remove_iptables_rules
  ip route del blackhole "$service_cidr" 2>/dev/null || true  # left by older checkouts
  ip route del "$service_cidr" 2>/dev/null || true
  ip link del "$pod_bridge" 2>/dev/null || true
  [ -f "$state_dir/sysctl.saved" ] && sysctl -q -p "$state_dir/sysctl.saved" >/dev/null 2>&1 || true
}

# A killed shim leaves its socket in /run/containerd/s; each task dir names its shim's socket.
remove_shim_sockets() {
  local dir address
  for dir in $(task_dirs); do
    address=$(cat "$dir/address" 2>/dev/null) || continue
    if [[ $address == unix:///run/containerd/s/* ]]; then rm -f "${address#unix://}"; fi
  done
}

stop_processes() {
  local i
  stop_component kubelet
  kill_container_inits
  kill_cgroup_members
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do stop_component "${components[i]}"; done
  kill_cgroup_members
  remove_shim_sockets
}

main() {
  take_lock
  [ -d "$state_dir" ] || { log "no cluster state in $state_dir: nothing to stop"; return 0; }
  shopt -s globstar nullglob
  stop_processes
  unmount_state
  remove_cgroups
  restore_host_settings
  rm -rf --one-file-system "$state_dir"
  log "stopped; removed $state_dir"
}

main "$@"
