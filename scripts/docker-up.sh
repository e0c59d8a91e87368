#!/usr/bin/env bash
# docker-up.sh makes a Docker engine and the executor image available, and is
# safe to run again: it installs docker.io when missing, starts dockerd when
# no daemon answers (and remembers that it did, for docker-down.sh), builds
# the local base image and builds the executor image only when
# Dockerfile.executor or executor-image/ changed.
#
# Several test runs may share the engine: each docker-up.sh that finds (or
# starts) the engine docker-up.sh started counts one user in $STATE/users,
# and docker-down.sh stops it only when the last user leaves.
#
# Every image it builds carries the hash of its inputs and is rebuilt when
# they change or the image is not valid (scripts/lib.sh).
#
# Environment: DOCKER_IMAGE (default codegw/executor:latest), DOCKER_HOST
# (default unix:///var/run/docker.sock), DOCKERD_DATA_ROOT (default: the
# engine's own, /var/lib/docker), FRESH=1 to ignore every cache: all codegw/*
# images are removed first and rebuilt without docker's layer cache.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. scripts/lib.sh
DOCKER_IMAGE=${DOCKER_IMAGE:-codegw/executor:latest}
STATE=/tmp/codegw-dockerd
PIDFILE=$STATE/dockerd.pid
LOG=$STATE/dockerd.log
USERS=$STATE/users

log() { printf 'docker-up: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

# The engine, and Compose to validate docker-compose.yml
# (scripts/compose-check.sh): Debian's docker-compose when no `docker
# compose` plugin answers.
pkgs=()
if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then pkgs+=(docker.io); fi
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then pkgs+=(docker-compose); fi
if ((${#pkgs[@]})); then
	log "installing ${pkgs[*]}"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >&2 ||
		{ as_root apt-get update -q >&2 && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >&2; }
fi

# ours tells whether the engine is the dockerd docker-up.sh started.
ours() {
	local pid
	pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
	[[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]]
}

# add_user N adds N to the count of users of our dockerd (N=0 resets it to 1).
add_user() {
	(
		flock 9
		n=$(cat "$USERS" 2>/dev/null || echo 0)
		[[ $n =~ ^[0-9]+$ ]] || n=0
		if [[ $1 == 0 ]]; then n=1; else n=$((n + $1)); fi
		echo "$n" >"$USERS"
	) 9>>"$STATE/users.lock"
}

if docker info >/dev/null 2>&1; then
	log "docker engine is up"
	ours && add_user 1
else
	[[ -n ${DOCKER_HOST:-} && ${DOCKER_HOST} != unix:///var/run/docker.sock ]] &&
		die "DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local dockerd for it"
	[[ $(id -u) == 0 ]] || die "no Docker engine answers and starting dockerd needs root"
	mkdir -p "$STATE"
	if [[ -f $PIDFILE ]] && ours; then # a stale pidfile's pid may belong to another process now
		dpid=$(cat "$PIDFILE")
		log "dockerd $dpid is already starting"
	else
		log "starting dockerd (log: $LOG)"
		args=(--storage-driver=overlay2 --bridge=none --iptables=false --ip-masq=false --pidfile="$PIDFILE")
		[[ -n ${DOCKERD_DATA_ROOT:-} ]] && args+=(--data-root="$DOCKERD_DATA_ROOT")
		# setsid: the engine outlives this script and its caller's process group.
		# dockerd writes (and on exit removes) $PIDFILE itself.
		setsid dockerd "${args[@]}" </dev/null >>"$LOG" 2>&1 &
		dpid=$!
	fi
	for _ in $(seq 1 300); do
		docker info >/dev/null 2>&1 && break
		if ! kill -0 "$dpid" 2>/dev/null; then
			tail -n 30 "$LOG" >&2
			die "dockerd exited; see $LOG"
		fi
		sleep 0.1
	done
	docker info >/dev/null 2>&1 || { tail -n 30 "$LOG" >&2; die "dockerd did not answer within 30s; see $LOG"; }
	log "dockerd is up"
	add_user 0
fi

if fresh; then
	mapfile -t old < <(docker image ls --format '{{.Repository}}:{{.Tag}}' | grep '^codegw/' || true)
	if ((${#old[@]})); then
		log "FRESH=1: removing ${old[*]}"
		docker image rm -f "${old[@]}" >/dev/null
	fi
fi

scripts/base-image.sh

[[ -f executor-image/packages.txt && -f executor-image/launch.py ]] ||
	die "executor-image/packages.txt or launch.py is missing"

# The build inputs' hash: the base image's id, this script, Dockerfile.executor,
# .dockerignore and every file under executor-image/ (names and contents), in
# a stable order.
mapfile -d '' inputs < <(find executor-image -type f -not -name '*.go' -not -name '*.pyc' -not -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z)
hash=$(docker image inspect -f '{{.Id}}' "${BASE_IMAGE:-codegw/debian:bookworm}" |
	inputs_hash scripts/docker-up.sh scripts/lib.sh Dockerfile.executor .dockerignore "${inputs[@]}")
valid=(python3 -c 'import ipykernel, pandas, matplotlib')
if image_current "$DOCKER_IMAGE" "$hash" "${valid[@]}"; then
	log "$DOCKER_IMAGE is up to date ($hash)"
	exit 0
fi

log "building $DOCKER_IMAGE"
start=$SECONDS
mapfile -t proxy < <(proxy_build_args)
build_image "$DOCKER_IMAGE" "$hash" --network host "${proxy[@]}" -f Dockerfile.executor . || exit 1
log "built $DOCKER_IMAGE in $((SECONDS - start))s"
# Drop the previous build's layers that no tag names any more.
docker image prune -f --filter "label=$HASH_LABEL" >/dev/null 2>&1 || true
