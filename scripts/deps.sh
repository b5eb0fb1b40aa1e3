#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian 12 machine: system packages and the Python
# virtualenv. Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(
  redis-server                 # the broker for integration tests and the local demo
  rabbitmq-server              # the RabbitMQ broker (3.10, management plugin) of the integration
                               # tests, with epmd from erlang-base
  etcd-server                  # the local cluster's datastore
  containerd runc              # the local cluster's container runtime
  containernetworking-plugins  # CNI loopback plugin for pod sandboxes
  debootstrap                  # builds the worker image's root filesystem
  openssl                      # the local cluster's certificates
  iptables conntrack ethtool socat util-linux mount  # what kubelet expects on the host
  gcc libc6-dev                # the static pause program of the local cluster's sandbox image
  curl iproute2                # the local cluster's readiness checks and its blackhole route
  prometheus                   # promtool (checks of metrics and alert rules) and the server the
                               # e2e tests scrape the operator with
)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
# Debian starts the packaged daemons; the project runs its own instances on its own ports.
for svc in redis-server rabbitmq-server epmd.socket epmd etcd containerd prometheus; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done

stamp=.venv/.deps-$(cat pyproject.toml probes/pyproject.toml scripts/deps.sh | sha256sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q -U pip >&2
  # Plain path entries, not setuptools' import-hook editables: every probe run starts this
  # Python, and each hook adds about 15 ms to every start.
  .venv/bin/pip install -q -e '.[dev]' --config-settings editable_mode=compat >&2
  .venv/bin/pip install -q -e probes --config-settings editable_mode=compat >&2
  rm -f .venv/.deps-*; touch "$stamp"
fi
