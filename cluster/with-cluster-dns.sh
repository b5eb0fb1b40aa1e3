#!/usr/bin/env bash
# Runs a command on this machine, the cluster's node, with the cluster's DNS as its resolver, as a
# pod has it: in a mount namespace of its own, /etc/resolv.conf names the kube-dns Service, so a
# process outside the cluster (the operator that `make up` runs here) resolves Service names such
# as redis.celery-demo-broker.svc, and none of its lookups goes to the machine's own resolver.
# Needs root and the running cluster.
#   cluster/with-cluster-dns.sh COMMAND [ARGS...]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
resolv_conf=$state_dir/node-resolv.conf
[ -s "$resolv_conf" ] || die "no local cluster in $state_dir (make cluster)"
exec unshare --mount --propagation private \
  sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$resolv_conf" "$@"
