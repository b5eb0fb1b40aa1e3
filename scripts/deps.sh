#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian 12 machine: system packages and the Python
# virtualenv. Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(
  redis-server                 # the broker for integration tests and the local demo
  redis-sentinel               # the Sentinel group (master, replica, three sentinels) of the
                               # integration tests' failover checks
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
for svc in redis-server redis-sentinel rabbitmq-server epmd.socket epmd etcd containerd prometheus; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done

# uv's pinned requirement line from uv.lock, with the hashes of all its files.
locked_uv() {
  .venv/bin/python - <<'EOF'
import tomllib

with open("uv.lock", "rb") as f:
    uv = next(p for p in tomllib.load(f)["package"] if p["name"] == "uv")
files = [*uv.get("wheels", []), *([uv["sdist"]] if "sdist" in uv else [])]
print(f"uv=={uv['version']}", *(f"--hash={file['hash']}" for file in files))
EOF
}

# The venv holds exactly what uv.lock pins: the two packages (editable, as plain path entries:
# see [tool.uv.config-settings-package] in pyproject.toml) and the dev group. uv itself is in the
# lock; a new venv gets it from pip, checked against the lock's hashes.
stamp=.venv/.deps-$(cat pyproject.toml probes/pyproject.toml uv.lock scripts/deps.sh |
  sha256sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  [ -x .venv/bin/uv ] || .venv/bin/pip install -q --require-hashes -r <(locked_uv) >&2
  UV_PYTHON_DOWNLOADS=never .venv/bin/uv sync --locked --all-packages --quiet >&2
  rm -f .venv/.deps-*; touch "$stamp"
fi
