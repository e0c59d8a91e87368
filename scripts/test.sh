#!/usr/bin/env bash
# test.sh runs the whole test suite on real parts. On a fresh Debian bookworm
# machine it first installs and starts what the tests need, idempotently:
# the kernel side (Debian's ipykernel and data stack, bubblewrap, a CJK
# font), a redis-server on a loopback port, and a Docker engine with the
# executor image built locally. What it started, it stops.
#
#   scripts/test.sh            # everything
#   SKIP_DOCKER=1 scripts/test.sh   # no Docker engine here: skip those suites (never under CI)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
export GOFLAGS=${GOFLAGS:--buildvcs=false}

step() { printf '\n==> %s\n' "$*"; }

step "kernel side: Debian packages"
scripts/deps.sh

step "redis-server"
eval "$(scripts/redis-up.sh)"
cleanup() {
	scripts/redis-down.sh || true
	if [[ ${DOCKER_STARTED:-} == 1 ]]; then scripts/docker-down.sh || true; fi
}
trap cleanup EXIT

if [[ ${SKIP_DOCKER:-} == 1 && ${CI:-} != true ]]; then
	step "Docker suites skipped (SKIP_DOCKER=1)"
else
	step "Docker engine and executor image"
	scripts/docker-up.sh
	DOCKER_STARTED=1
fi

step "go vet"
go vet ./...

step "unit and end-to-end tests (local sandboxed kernels, real redis-server, real Docker engine)"
# -p 1: the suites start real kernels; run packages one at a time so their
# timing checks do not compete for the two cores.
go test -race -p 1 -timeout 40m -count=1 ./...

if [[ ${DOCKER_STARTED:-} == 1 ]]; then
	step "end-to-end suites again, on Docker executor containers"
	CODEGW_TEST_EXECUTOR=docker go test -timeout 30m -count=1 ./gateway/
fi
step "all tests passed"
