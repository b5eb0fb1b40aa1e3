#!/usr/bin/env bash
# Builds CoreDNS (the pinned version, with only the plugins main.go links) from Go modules into a
# cached binary, keyed like cluster/k8s/build.sh by the version and this folder's sources. Prints
# the binary's path as its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(cat "$here/VERSION")
cache=${CELERY_OPERATOR_CACHE:-$HOME/.cache/celery-operator}
key=$(cat "$here/VERSION" "$here/main.go" "$here/build.sh" | sha256sum | cut -c1-12)
out="$cache/coredns/$version-$key"
if [ -x "$out/coredns" ]; then echo "$out/coredns"; exit 0; fi

mkdir -p "$out/src"
cp "$here/main.go" "$out/src/main.go"
cd "$out/src"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
printf 'module localcluster/coredns\n\ngo 1.24.0\n\nrequire github.com/coredns/coredns %s\n' "$version" > go.mod
go mod tidy >&2
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/coredns.tmp" . >&2
mv "$out/coredns.tmp" "$out/coredns"
echo "$out/coredns"
