#!/usr/bin/env bash
# The operator image's install steps, the one definition both of its builds run, so that they
# cannot drift: deploy/Dockerfile's RUN lines, and cluster/image.sh inside the Debian root
# filesystem of images/operator/base.sh (localhost/celery-operator/operator:dev). Both start from
# Debian bookworm with the packages of packages.txt; config.json is the runtime configuration
# both declare (tests/integration/test_operator_image.py holds the Dockerfile to all three).
#   install.sh user                     the user the operator runs as, 10001:10001
#   install.sh deps REQUIREMENTS        /opt/venv from Debian's python3, with the versions and
#                                       hashes of REQUIREMENTS (deploy/requirements.txt, exported
#                                       from uv.lock by scripts/lock.sh)
#   install.sh package SOURCE [PREFIX]  the celery_operator package from SOURCE (a directory with
#                                       the repository's pyproject.toml, README.md and operator/)
#                                       into /opt/venv, or into PREFIX, a directory that is to
#                                       become /opt/venv (cluster/image.sh's thin layer)
set -euo pipefail

venv=/opt/venv
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# A numeric user and group, so that the Deployment's runAsNonRoot can verify runAsUser 10001
# without a passwd lookup. Its home is /tmp, the one writable place (an emptyDir in
# deploy/operator/deployment.yaml); nothing the operator runs writes there today. No lastlog
# entry: a sparse file of 3 MB at this uid, which a layer tar stores in full.
add_user() {
  groupadd --gid 10001 celery-operator
  useradd --no-log-init --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
    --shell /usr/sbin/nologin celery-operator
}

# Byte code compiled once, at build time, and never checked against the sources' times: the root
# filesystem is read-only and PYTHONDONTWRITEBYTECODE is set, so a stale .pyc would be recompiled
# in memory at every start. Timestamp checks would always fail in the local build, whose layers
# clamp every mtime to 0 (cluster/oci.py), and the files of an image never change anyway.
compile() {
  "$venv/bin/python" -m compileall -q -f -j 0 --invalidation-mode unchecked-hash "$@" >/dev/null
}

# Debian's pip as it comes (an upgrade would be the one package the lock does not pin).
install_deps() {
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --no-compile --require-hashes -r "$1"
  compile "$venv"
}

# No dependencies (deps did them) and no index: the build backend is the locked setuptools
# already in /opt/venv. pip runs from /opt/venv even with a PREFIX, so the console script's
# first line names /opt/venv/bin/python.
install_package() {
  local source=$1 target=${2:-$venv}
  local args=(-q --no-compile --no-deps --no-index --no-build-isolation)
  [ "$target" = "$venv" ] || args+=(--prefix "$target")
  "$venv/bin/pip" install "${args[@]}" "$source"
  compile "$("$venv/bin/python" -c 'import sys, sysconfig
print(sysconfig.get_path("purelib", vars={"base": sys.argv[1], "platbase": sys.argv[1]}))' \
    "$target")/celery_operator"
}

case ${1:-} in
  user) add_user ;;
  deps) install_deps "$2" ;;
  package) install_package "$2" "${3:-}" ;;
  *) sed -n '2,/^set -e/p' "$0" | sed '$d' >&2 && exit 2 ;;
esac
