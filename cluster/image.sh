#!/usr/bin/env bash
# Builds the cluster's images locally (nothing is ever pulled) and imports them into the
# cluster's containerd when it runs:
#   localhost/celery-operator/pause:3.10     the pod sandbox, a static C program (images/pause)
#   localhost/celery-operator/worker:dev     Debian bookworm + /opt/venv with Celery (the versions
#                                             of uv.lock), the probes package and the example app,
#                                             run as the user celery, 10001:10001 (images/worker)
#   localhost/celery-operator/operator:dev   Debian bookworm + /opt/venv with the operator's
#                                             dependencies (deploy/requirements.txt) and the
#                                             celery_operator package, run as 10001:10001, by the
#                                             steps deploy/Dockerfile runs too (images/operator)
# The worker and operator images are two layers each: a slow base (debootstrap + pip, a minute)
# cached in ~/.cache/celery-operator/images keyed by its recipe, and a thin project layer (the
# worker's probes/ and examples/app, the operator's package) rebuilt whenever its content
# changes. An image whose digest containerd already has is not imported again.
#   image.sh                build, and import if the cluster's containerd runs
#   image.sh import         the same, called by up.sh once containerd runs
#   image.sh layers IMAGE   build one image (pause, worker or operator) without importing it and
#                           print its config file, then its layer tars, one a line (for tests)
set -euo pipefail
# The builds run inside $(...): without this, a failing step there (debootstrap, pip) would go on
# and cache a half-built layer.
shopt -s inherit_errexit
source "$(dirname "$0")/lib.sh"

images_cache=$cache_dir/images
oci() { python3 "$cluster_src/oci.py" "$@"; }

# A short hash of the named files' contents and of extra words.
content_key() { { cat "$@"; } | sha256sum | cut -c1-12; }

# The project's files that go into the thin layer, as a stable stream (names and contents).
project_files() {
  local dirs=(examples/app)
  [ -f "$repo_root/probes/pyproject.toml" ] && dirs+=(probes)
  (cd "$repo_root" && find "${dirs[@]}" -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' \
    ! -path '*/.pytest_cache/*' ! -path '*/build/*' ! -name '*.pyc' -print0 2>/dev/null |
    sort -z | xargs -0r sha256sum)
}

build_pause() {
  local src=$repo_root/images/pause/pause.c key dir
  key=$(content_key "$src")
  dir=$images_cache/pause-$key
  [ -f "$dir/layer.tar" ] && { echo "$dir"; return; }
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/rootfs"
  gcc -static -Os -s -Wall -Wextra -o "$dir.tmp/rootfs/pause" "$src"
  echo '{"Entrypoint":["/pause"]}' > "$dir.tmp/config.json"
  oci layer "$dir.tmp/rootfs" "$dir.tmp/layer.tar" >/dev/null
  rm -rf "$dir.tmp/rootfs" && mv "$dir.tmp" "$dir"
  echo "$dir"
}

build_worker_base() {
  local recipe=$repo_root/images/worker key dir
  key=$(content_key "$recipe/base.sh" "$recipe/packages.txt" "$recipe/requirements.txt")
  dir=$images_cache/worker-base-$key
  [ -f "$dir/layer.tar" ] && { echo "$dir"; return; }
  log "building the worker base layer (debootstrap + pip, a few minutes, once) in $dir"
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  "$recipe/base.sh" "$dir.tmp/rootfs"
  oci layer "$dir.tmp/rootfs" "$dir.tmp/layer.tar" >/dev/null
  mv "$dir.tmp" "$dir"
  echo "$dir"
}

# pip runs inside the cached base rootfs (its /opt/venv python writes the right script headers)
# and installs into a prefix under its /tmp, which becomes the layer's /opt/venv. Offline: the
# build backend is the base's locked setuptools, and the probes have no dependencies to fetch.
install_probes() {
  local rootfs=$1 layer=$2
  [ -f "$repo_root/probes/pyproject.toml" ] || return 0
  rm -rf "$rootfs/tmp/probes" "$rootfs/tmp/layer"
  cp -r "$repo_root/probes" "$rootfs/tmp/probes"
  in_base "$rootfs" pip install -q --no-cache-dir --no-index --no-deps --no-build-isolation \
    --prefix /tmp/layer/opt/venv /tmp/probes >&2
  mv "$rootfs/tmp/layer/opt" "$layer/opt"
  # Called inside $(...), where set -e does not reach: check the result instead.
  [ -x "$layer/opt/venv/bin/celery-probe" ] || die "the probes package did not install"
  rm -rf "$rootfs/tmp/probes" "$rootfs/tmp/layer"
}

in_base() {
  local rootfs=$1 && shift
  # chroot by its full path: env looks the command up in the PATH it was given, the base's.
  env -i PATH=/opt/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$(command -v chroot)" "$rootfs" "$@"
}

build_worker_project() {
  local base=$1 key dir
  key=$(project_files | content_key - "$base/layer.tar.sha256" "$cluster_src/image.sh")
  dir=$images_cache/worker-project-$key
  [ -f "$dir/layer.tar" ] && { echo "$dir"; return; }
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/rootfs/app"
  (cd "$repo_root/examples/app" && tar -c --exclude=__pycache__ --exclude='*.pyc' .) |
    tar -x -C "$dir.tmp/rootfs/app"
  install_probes "$base/rootfs" "$dir.tmp/rootfs"
  oci layer "$dir.tmp/rootfs" "$dir.tmp/layer.tar" >/dev/null
  rm -rf "$dir.tmp/rootfs" && mv "$dir.tmp" "$dir"
  prune "$images_cache/worker-project-*" "$dir"
  echo "$dir"
}

# The operator image (images/operator): its base is Debian with /opt/venv holding exactly
# deploy/requirements.txt, made by install.sh's user and deps steps, as in deploy/Dockerfile.
operator_recipe=$repo_root/images/operator
operator_image=localhost/celery-operator/operator:dev

build_operator_base() {
  local key dir
  key=$(content_key "$operator_recipe/base.sh" "$operator_recipe/packages.txt" \
    "$operator_recipe/install.sh" "$repo_root/deploy/requirements.txt")
  dir=$images_cache/operator-base-$key
  [ -f "$dir/layer.tar" ] && { echo "$dir"; return; }
  log "building the operator base layer (debootstrap + pip, about a minute, once) in $dir"
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  "$operator_recipe/base.sh" "$dir.tmp/rootfs"
  oci layer "$dir.tmp/rootfs" "$dir.tmp/layer.tar" >/dev/null
  mv "$dir.tmp" "$dir"
  echo "$dir"
}

# What the package is built from, the files deploy/Dockerfile copies: the project's metadata
# (its readme included) and the package's sources.
operator_sources() {
  (cd "$repo_root" && find pyproject.toml README.md operator/celery_operator -type f \
    ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0r sha256sum)
}

# install.sh's package step inside the cached base rootfs, into a prefix under its /tmp that
# becomes the layer's /opt/venv (as install_probes does for the worker).
build_operator_package() {
  local base=$1 key dir rootfs=$1/rootfs
  key=$(operator_sources | content_key - "$base/layer.tar.sha256" "$cluster_src/image.sh" \
    "$operator_recipe/install.sh")
  dir=$images_cache/operator-package-$key
  [ -f "$dir/layer.tar" ] && { echo "$dir"; return; }
  rm -rf "$dir.tmp" "$rootfs/tmp/src" "$rootfs/tmp/recipe" "$rootfs/tmp/layer"
  mkdir -p "$dir.tmp/rootfs" "$rootfs/tmp/src/operator" "$rootfs/tmp/recipe"
  cp "$repo_root/pyproject.toml" "$repo_root/README.md" "$rootfs/tmp/src/"
  (cd "$repo_root/operator" && tar -c --exclude=__pycache__ --exclude='*.pyc' celery_operator) |
    tar -x -C "$rootfs/tmp/src/operator"
  cp "$operator_recipe/install.sh" "$rootfs/tmp/recipe/"
  in_base "$rootfs" /tmp/recipe/install.sh package /tmp/src /tmp/layer/opt/venv >&2
  mv "$rootfs/tmp/layer/opt" "$dir.tmp/rootfs/opt"
  rm -rf "$rootfs/tmp/src" "$rootfs/tmp/recipe" "$rootfs/tmp/layer"
  [ -x "$dir.tmp/rootfs/opt/venv/bin/celery-operator" ] || die "the operator did not install"
  oci layer "$dir.tmp/rootfs" "$dir.tmp/layer.tar" >/dev/null
  rm -rf "$dir.tmp/rootfs" && mv "$dir.tmp" "$dir"
  prune "$images_cache/operator-package-*" "$dir"
  echo "$dir"
}

# Removes older builds matching a glob, keeping the one just made.
prune() {
  local keep=$2 old
  for old in $1; do
    [ "$old" = "$keep" ] || [ ! -d "$old" ] || rm -rf "$old"
  done
}

# The user is the base's celery (images/worker/base.sh), as in images/worker/Dockerfile.
worker_config() {
  cat <<'EOF'
{"Env": ["PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
         "PYTHONPATH=/app", "PYTHONUNBUFFERED=1", "LANG=C.UTF-8"],
 "User": "10001:10001", "WorkingDir": "/app", "Cmd": ["celery", "--version"]}
EOF
}

# The digest of image $1 in containerd, only while all its blobs are there and unpacked: an
# import that failed halfway may have moved the name to an image it could not unpack.
imported_digest() {
  ctr_cmd images check "name==$1" 2>/dev/null |
    awk 'NR > 1 && $4 == "complete" && $NF == "true" { print $3 }'
}

# The digests of the blobs containerd holds.
stored_blobs() { ctr_cmd content ls -q 2>/dev/null || true; }

# Imports image $1 (config file $2, layers after) unless containerd already has that digest.
# Layers whose blob containerd holds (an unchanged base) stay out of the archive: import reads
# every byte it is given, 6 s for the operator's base against 0.2 s without it. Should such a blob
# vanish meanwhile, that import fails and one with every layer follows.
import_image() {
  local name=$1 config=$2 && shift 2
  local want layer omit=()
  want=$(oci archive "$name" "$config" "$@")
  [ "$(imported_digest "$name")" = "$want" ] && return 0
  log "importing $name ($want)"
  local stored
  stored=$(stored_blobs)
  for layer in "$@"; do
    if [ -f "$layer.sha256" ] && grep -qxF "$(cat "$layer.sha256")" <<< "$stored"; then
      omit+=(--omit "$(cat "$layer.sha256")")
    fi
  done
  if ! oci archive "$name" "$config" "$@" "${omit[@]}" --out - 2>/dev/null |
    ctr_cmd images import - >/dev/null 2>&1; then
    log "the import of $name without the layers containerd holds failed: importing every layer"
    oci archive "$name" "$config" "$@" --out - 2>/dev/null | ctr_cmd images import - >/dev/null
  fi
  [ "$(imported_digest "$name")" = "$want" ] || die "import of $name did not give $want"
}

# Builds image $1 and prints its config file, then its layers (bottom first), one a line.
build_image() {
  local base project
  case $1 in
    pause)
      project=$(build_pause)
      printf '%s\n' "$project/config.json" "$project/layer.tar" ;;
    worker)
      base=$(build_worker_base)
      project=$(build_worker_project "$base")
      worker_config > "$project/config.json"
      printf '%s\n' "$project/config.json" "$base/layer.tar" "$project/layer.tar" ;;
    operator)
      base=$(build_operator_base)
      project=$(build_operator_package "$base")
      printf '%s\n' "$operator_recipe/config.json" "$base/layer.tar" "$project/layer.tar" ;;
    *) die "no image '$1' (pause, worker or operator)" ;;
  esac
}

image_ref() {
  case $1 in
    pause) echo "$pause_image" ;;
    worker) echo "$worker_image" ;;
    operator) echo "$operator_image" ;;
  esac
}

main() {
  take_lock
  mkdir -p "$images_cache"
  if [ "${1:-}" = layers ]; then
    build_image "${2:?which image: pause, worker or operator}"
    return 0
  fi
  local names=(pause worker operator) name
  declare -A built
  for name in "${names[@]}"; do
    built[$name]=$(build_image "$name")
  done
  if ! containerd_alive; then
    [ "${1:-}" = import ] && die "containerd is not running at $containerd_sock"
    log "images built; the cluster is not running, so 'make cluster' will import them"
    return 0
  fi
  local parts
  for name in "${names[@]}"; do
    mapfile -t parts <<< "${built[$name]}"
    import_image "$(image_ref "$name")" "${parts[@]}"
  done
  log "images ready in the cluster: $pause_image, $worker_image, $operator_image"
}

main "$@"
