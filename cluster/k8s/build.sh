#!/usr/bin/env bash
# Builds the pinned upstream Kubernetes components from Go modules into one cached binary.
# The cache lives outside the repo, keyed by the Kubernetes version and this folder's sources,
# so a warm machine skips the build entirely. Prints the binary's path as its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(cat "$here/VERSION")
cache=${CELERY_OPERATOR_CACHE:-$HOME/.cache/celery-operator}
key=$(cat "$here/VERSION" "$here/main.go" "$here/build.sh" | sha256sum | cut -c1-12)
out="$cache/k8s/$version-$key"
if [ -x "$out/k8s" ]; then echo "$out/k8s"; exit 0; fi

mkdir -p "$out/src"
cp "$here/main.go" "$out/src/main.go"
cd "$out/src"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
# k8s.io/kubernetes points its staging modules at ./staging with replace directives, which a
# dependent module cannot follow; pin each staging module to its published twin (v0.X.Y).
staging_version="v0.${version#v1.}"
go mod download -json "k8s.io/kubernetes@$version" >/dev/null
gomod=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$version.mod
{
  echo "module localcluster/k8s"
  echo
  echo "go 1.23"
  echo
  echo "require k8s.io/kubernetes $version"
  echo
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#replace \1 => \1 '"$staging_version"'#p' "$gomod"
} > go.mod
go mod tidy >&2
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$version" | cut -d. -f2)" -o "$out/k8s.tmp" . >&2
mv "$out/k8s.tmp" "$out/k8s"
echo "$out/k8s"
