#!/usr/bin/env bash
# Builds the worker image's slow base root filesystem into $1: a minimal Debian bookworm made with
# debootstrap, the packages of packages.txt, the user pods run as, and /opt/venv with the hashed
# versions of requirements.txt (exported from uv.lock by scripts/lock.sh) from PyPI.
# cluster/image.sh caches the result keyed by a hash of this folder's recipe files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rootfs=$1
mirror=${CELERY_OPERATOR_DEBIAN_MIRROR:-http://deb.debian.org/debian}

packages() { grep -v '^#' "$here/packages.txt" | paste -sd, -; }

# Runs a command inside the root filesystem with a clean environment (the host's pip settings,
# such as a wheel directory, do not exist in there).
in_rootfs() {
  env -i PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 PIP_CERT=/tmp/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    chroot "$rootfs" "$@"
}

debootstrap_rootfs() {
  debootstrap --variant=minbase --include="$(packages)" bookworm "$rootfs" "$mirror" >&2
}

# The host's CA bundle and resolver are lent for the pip step only: egress may go through a proxy
# whose CA only the host trusts.
install_venv() {
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/tmp/host-ca.crt"
  cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"
  cp "$here/requirements.txt" "$rootfs/tmp/requirements.txt"
  in_rootfs python3 -m venv /opt/venv
  # Debian's pip as it comes: an upgrade would be the one package the lock does not pin.
  in_rootfs /opt/venv/bin/pip install -q --no-cache-dir --require-hashes \
    -r /tmp/requirements.txt >&2
  rm -f "$rootfs/tmp/host-ca.crt" "$rootfs/tmp/requirements.txt"
  : > "$rootfs/etc/resolv.conf"
}

# A numeric user and group, so that a pod's runAsNonRoot can check runAsUser 10001 without a
# passwd lookup (the operator's default securityContext). No lastlog entry: a sparse file of 3 MB
# at this uid, which the layer tar would store in full.
add_user() {
  in_rootfs groupadd --gid 10001 celery
  in_rootfs useradd --no-log-init --uid 10001 --gid 10001 --home-dir /home/celery \
    --create-home --shell /usr/sbin/nologin celery
}

# What a container never needs: package lists and caches, logs of the build.
slim_rootfs() {
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*.log \
    "$rootfs"/root/.cache "$rootfs"/tmp/*
  mkdir -p "$rootfs/app"
}

debootstrap_rootfs
add_user
install_venv
slim_rootfs
