#!/usr/bin/env bash
# Builds the worker image's slow base root filesystem into $1: a minimal Debian bookworm made with
# debootstrap, the packages of packages.txt, and /opt/venv with requirements.txt from PyPI.
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
  in_rootfs /opt/venv/bin/pip install -q --no-cache-dir -U pip >&2
  in_rootfs /opt/venv/bin/pip install -q --no-cache-dir -r /tmp/requirements.txt >&2
  rm -f "$rootfs/tmp/host-ca.crt" "$rootfs/tmp/requirements.txt"
  : > "$rootfs/etc/resolv.conf"
}

# What a container never needs: package lists and caches, logs of the build.
slim_rootfs() {
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*.log \
    "$rootfs"/root/.cache "$rootfs"/tmp/*
  mkdir -p "$rootfs/app"
}

debootstrap_rootfs
install_venv
slim_rootfs
