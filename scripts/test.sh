#!/usr/bin/env bash
# test.sh runs the whole test suite on real parts. On a fresh Debian bookworm
# machine it first installs and starts what the tests need, idempotently:
# the kernel side (Debian's ipykernel and data stack, bubblewrap, a CJK
# font), a redis-server on a loopback port, and a Docker engine with the
# executor image built locally. What it started, it stops.
#
#   scripts/test.sh            # everything
#   scripts/test.sh --fresh    # the same, ignoring every cache: as on a machine that never ran it
#   SKIP_DOCKER=1 scripts/test.sh   # no Docker engine here: skip those suites (never under CI)
#
# --fresh (or FRESH=1) removes every codegw/* image before anything is built,
# builds them again without docker's layer cache, and empties Go's test
# cache; cached images are otherwise reused only when they carry the hash of
# their inputs and are valid (scripts/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
export GOFLAGS=${GOFLAGS:--buildvcs=false}

for arg in "$@"; do
	case $arg in
	--fresh) FRESH=1 ;;
	*) echo "usage: scripts/test.sh [--fresh]" >&2; exit 2 ;;
	esac
done

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
	FRESH=${FRESH:-0} scripts/docker-up.sh
	DOCKER_STARTED=1
fi
# The images docker-up.sh removed are rebuilt once, when the tests that use
# them first ask (scripts/compose-check.sh), not again by each script.
if [[ ${FRESH:-0} == 1 ]]; then go clean -testcache; fi
unset FRESH FORCE

step "LibreChat's code tool: @librechat/agents from npm (gateway/librechat_client_test.go)"
# Cached outside the repository by version; node and npm are required under
# CI=true (the real-client test then fails without them), optional otherwise.
if agents=$(scripts/librechat-agents.sh); then
	export CODEGW_LIBRECHAT_AGENTS=$agents
elif [[ ${CI:-} == true ]]; then
	exit 1
fi

step "go vet"
go vet ./...

# staticcheck: about 1.5 CPU-minutes (6 min on a loaded 2-core machine); its
# binary is built once per version (scripts/staticcheck.sh) and then cached.
step "staticcheck"
scripts/staticcheck.sh ./...

step "unit and end-to-end tests (local sandboxed kernels, real redis-server, real Docker engine)"
# -p 1: the suites start real kernels; run packages one at a time so their
# timing checks do not compete for the two cores.
go test -race -p 1 -timeout 40m -count=1 ./...

step "stateless calls on full kernels too (STATELESS_KERNEL=kernel, the fallback to one-shot kernels)"
CODEGW_TEST_STATELESS_KERNEL=kernel go test -race -count=1 -timeout 10m \
	-run 'TestStatelessExecute|TestFaults|TestStdoutFlood|TestAnswerBound|TestInputFiles' ./gateway/

step "fuzz: every Go fuzz target for ${FUZZTIME:-20s} beyond its seeds (scripts/fuzz.sh: 17 targets, about 7 min)"
scripts/fuzz.sh

if [[ ${DOCKER_STARTED:-} == 1 ]]; then
	step "end-to-end suites again, on Docker executor containers"
	CODEGW_TEST_EXECUTOR=docker go test -timeout 30m -count=1 ./gateway/
fi
# --- Helm chart (deploy/, a Go module of its own) -----------------------------
# helm lint and helm template through Helm's Go module, every rendered
# manifest decoded strictly into the k8s.io/api types. ~3-5 min from
# scratch (Helm's and the Kubernetes libraries' compile), ~10 s warm.
step "Helm chart: lint, render, strict decoding (deploy/)"
(cd deploy && go vet ./... && go test -count=1 ./...)
# ------------------------------------------------------------------------------

step "soak: 60 s of the whole mix, every answer checked, memory flat, nothing left (bench/soak)"
go run ./bench/soak -duration 60s

step "all tests passed"
