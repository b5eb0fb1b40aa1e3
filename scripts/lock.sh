#!/usr/bin/env bash
# The one lock of the project: uv.lock pins, with hashes, every Python package of the operator,
# the probes, the dev tools and the two images. The images install hashed lists exported from it
# with plain pip (no uv in an image), committed so that an image's build cache is keyed by the
# content of its list: a lock change that does not touch an image does not rebuild it.
#   scripts/lock.sh                  after an edit of a pyproject.toml: re-resolve (other pins kept)
#                                    and rewrite the lists
#   scripts/lock.sh --upgrade        every package to its newest version within the bounds
#   scripts/lock.sh --upgrade-package NAME   one package
#   scripts/lock.sh --check          fail when uv.lock no longer matches the pyproject files or a
#                                    list no longer matches uv.lock (make lint, CI); offline
set -euo pipefail
cd "$(dirname "$0")/.."
uv=.venv/bin/uv

# Each list, and the uv export arguments that select what goes into it.
lists=(images/worker/requirements.txt deploy/requirements.txt)
export_args() {
  case $1 in
    # The group only: Celery, Flower, setuptools for the probes' build; the probes themselves
    # are installed from source, in the image's project layer.
    images/worker/requirements.txt) echo --only-group worker-image --no-emit-workspace ;;
    # The operator's own dependencies, and setuptools to build it without build isolation.
    deploy/requirements.txt) echo --no-default-groups --group build --no-emit-project ;;
  esac
}

render() {
  local list=$1
  echo "# Written by scripts/lock.sh from uv.lock: do not edit; change pyproject.toml and run it."
  # shellcheck disable=SC2046  # the arguments are words without spaces
  "$uv" export --frozen --offline --quiet --no-header $(export_args "$list")
}

if [ "${1:-}" = --check ]; then
  "$uv" lock --check --offline --quiet ||
    { echo "uv.lock does not match pyproject.toml: run scripts/lock.sh" >&2; exit 1; }
  for list in "${lists[@]}"; do
    diff -q <(render "$list") "$list" >/dev/null ||
      { echo "$list does not match uv.lock: run scripts/lock.sh" >&2; exit 1; }
  done
  exit 0
fi

"$uv" lock "$@"
for list in "${lists[@]}"; do
  render "$list" > "$list.tmp" && mv "$list.tmp" "$list"
done
