#!/usr/bin/env bash
# test.sh runs the whole test suite on real parts. On a fresh Debian bookworm
# machine it first installs and starts what the tests need, idempotently:
# the kernel side (Debian's ipykernel and data stack, bubblewrap, a CJK
# font), a redis-server and an S3-compatible store (SeaweedFS) on loopback
# ports, and a Docker engine with the
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
	if [[ ${K8S_STARTED:-} == 1 ]]; then scripts/k8s-down.sh || true; fi
	scripts/redis-down.sh || true
	scripts/s3-down.sh || true
	if [[ ${DOCKER_STARTED:-} == 1 ]]; then scripts/docker-down.sh || true; fi
}
trap cleanup EXIT

# Session snapshots' object store (session/snapshot, gateway TestSnapshotsOnS3):
# SeaweedFS built from its Go module once (~10-25 min), then cached by version.
step "S3-compatible object store (SeaweedFS on loopback)"
eval "$(scripts/s3-up.sh)"

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

step "fuzz: every Go fuzz target for ${FUZZTIME:-20s} beyond its seeds (scripts/fuzz.sh: 22 targets, about 8 min)"
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

# --- Kubernetes: a real one-node cluster (scripts/k8s-*.sh) -------------------
# Kubernetes, etcd and helm are built from the Go module proxy once per
# version (scripts/k8s-build.sh, cached under /var/cache/codegw: ~15 min
# the first time on a loaded machine, then milliseconds); the cluster comes
# up in ~10 s (the first import of the images into its containerd, kept in
# the same cache, 1-2 min more), TestK8s installs the chart and drives it
# (~2 min), and k8s-down.sh removes the cluster (~15 s), here or in the
# EXIT trap when something failed: ~2.5 min in all with warm caches. Needs
# root and the Docker engine (the images); under CI=true a missing part
# fails.
if [[ $(id -u) != 0 || ${DOCKER_STARTED:-} != 1 ]]; then
	if [[ ${CI:-} == true ]]; then
		echo "CI=true: the Kubernetes step needs root and the Docker engine" >&2
		exit 1
	fi
	step "Kubernetes skipped (needs root and the Docker engine)"
else
	step "Kubernetes: build (cached), cluster up, the chart on it (TestK8s), cluster down"
	k8s_begin=$SECONDS
	LOCAL_IMAGES=1 scripts/compose-check.sh # the api and Redis images
	scripts/k8s-build.sh >/dev/null
	K8S_STARTED=1
	eval "$(scripts/k8s-up.sh)"
	(cd deploy && CODEGW_K8S_E2E=1 go test -count=1 -run '^TestK8s$' -v -timeout 20m .)
	scripts/k8s-down.sh
	K8S_STARTED=0
	echo "Kubernetes step: $((SECONDS - k8s_begin))s"
fi
# ------------------------------------------------------------------------------

step "soak: 60 s of the whole mix, every answer checked, memory flat, nothing left (bench/soak)"
go run ./bench/soak -duration 60s

step "all tests passed"
