#!/usr/bin/env bash
# staticcheck.sh runs staticcheck (honnef.co/go/tools) at the version pinned
# below on its arguments (default ./...). The binary is built once through
# the Go module proxy of `go env GOPROXY` and cached outside the repository,
# keyed by its version and the Go version that built it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin

version=v0.8.2
cache=${XDG_CACHE_HOME:-$HOME/.cache}/codegw/staticcheck-$version-$(go env GOVERSION)
bin=$cache/staticcheck
if [[ ! -x $bin ]] || ! "$bin" -version >/dev/null 2>&1; then
	mkdir -p "$cache"
	tmp=$(mktemp -d "$cache/build.XXXXXX")
	GOBIN=$tmp go install "honnef.co/go/tools/cmd/staticcheck@$version"
	mv "$tmp/staticcheck" "$bin"
	rmdir "$tmp"
fi
if [[ $# == 0 ]]; then set -- ./...; fi
exec "$bin" "$@"
