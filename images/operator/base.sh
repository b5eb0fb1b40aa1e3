#!/usr/bin/env bash
# Builds the operator image's slow base root filesystem into $1, the way deploy/Dockerfile builds
# its first layers: a minimal Debian bookworm made with debootstrap and the packages of
# packages.txt, then install.sh's user and deps steps (/opt/venv with the hashed versions of
# deploy/requirements.txt from PyPI). cluster/image.sh caches the result keyed by a hash of these
# files, and runs install.sh's package step for the thin layer.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
rootfs=$1
mirror=${CELERY_OPERATOR_DEBIAN_MIRROR:-http://deb.debian.org/debian}

packages() { grep -v '^#' "$here/packages.txt" | paste -sd, -; }

# Runs a command inside the root filesystem with a clean environment (the host's pip settings,
# such as a wheel directory, do not exist in there).
in_rootfs() {
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 PIP_CERT=/tmp/host-ca.crt chroot "$rootfs" "$@"
}

debootstrap_rootfs() {
  debootstrap --variant=minbase --include="$(packages)" bookworm "$rootfs" "$mirror" >&2
}

# The host's CA bundle and resolver are lent for the pip step only: egress may go through a proxy
# whose CA only the host trusts.
run_install() {
  mkdir -p "$rootfs/tmp/recipe"
  cp "$here/install.sh" "$repo_root/deploy/requirements.txt" "$rootfs/tmp/recipe/"
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/tmp/host-ca.crt"
  cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"
  in_rootfs /tmp/recipe/install.sh user
  in_rootfs /tmp/recipe/install.sh deps /tmp/recipe/requirements.txt >&2
  : > "$rootfs/etc/resolv.conf"
}

# Debian compiled its standard library at install time with timestamp checks, which the layer's
# clamped mtimes (cluster/oci.py) make fail: recompiled once, as install.sh does /opt/venv. The
# Dockerfile's layers keep their times, so only this build needs it.
compile_stdlib() {
  in_rootfs python3 -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \
    /usr/lib/python3.11 /usr/lib/python3/dist-packages >/dev/null
}

# What a container never needs: package lists and caches, logs of the build, documentation (but
# the copyright files), manual pages and translations.
slim_rootfs() {
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*.log \
    "$rootfs"/root/.cache "$rootfs"/tmp/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/*
  find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
}

debootstrap_rootfs
run_install
compile_stdlib
slim_rootfs
