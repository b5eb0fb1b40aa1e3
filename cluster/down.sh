#!/usr/bin/env bash
# Stops the local cluster and removes its state: every process up.sh started (by its PID file,
# never by name), the pods' containers and their containerd shims (by the PID files containerd
# keeps under the state dir), every mount under the state dir, the kubelet's cgroups, the
# blackhole route; then puts back the host settings the kubelet changed. Safe to run twice.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL.
stop_pid() {
  local pid=$1 deadline=$((SECONDS + 10))
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
}

stop_component() {
  local pid
  pid=$(component_pid "$1") || return 0
  stop_pid "$pid"
}

# containerd writes init.pid (a container's first process) and shim.pid (its shim) under its
# state dir. After a reboot those numbers mean other processes: only trust them on the same boot.
same_boot() { [ "$(cat "$state_dir/boot_id" 2>/dev/null)" = "$(cat /proc/sys/kernel/random/boot_id)" ]; }

stop_runtime_pid_files() {
  local name=$1 file
  same_boot || return 0
  for file in "$containerd_dir"/state/io.containerd.runtime.v2.task/*/*/"$name"; do
    [ -s "$file" ] && kill -KILL "$(cat "$file")" 2>/dev/null || true
  done
}

# Whatever still runs in the kubelet's cgroup tree is a pod's process: kill it by membership.
kill_cgroup_members() {
  local procs pid
  for procs in /sys/fs/cgroup/*/"$cgroup_parent"/**/cgroup.procs /sys/fs/cgroup/*/"$cgroup_parent"/cgroup.procs; do
    [ -f "$procs" ] || continue
    while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done < "$procs"
  done
}

remove_cgroups() {
  local dir
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

restore_host_settings() {
  [ -f "$state_dir/sysctl.saved" ] && sysctl -q -p "$state_dir/sysctl.saved" >/dev/null 2>&1 || true
  ip route del blackhole "$service_cidr" 2>/dev/null || true
}

stop_processes() {
  local i
  stop_component kubelet
  stop_runtime_pid_files init.pid
  kill_cgroup_members
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do stop_component "${components[i]}"; done
  stop_runtime_pid_files shim.pid
}

main() {
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
