#!/usr/bin/env bash
# compose-check.sh builds, without any container registry, the images
# docker-compose.yml runs, and validates the compose file:
#
#   codegw/debian:bookworm   scripts/base-image.sh (debootstrap)
#   codegw/golang:local      the host's Go toolchain and module download cache,
#                            imported (Dockerfile.api's build stage uses it)
#   codegw/api:latest        Dockerfile.api
#   codegw/redis:local, codegw/nginx:local   Redis and the load balancer, from
#                            Debian's packages (compose uses the official
#                            images by default; REDIS_IMAGE/LB_IMAGE select these)
#
# The executor image is scripts/docker-up.sh's. The api image's build context
# is the repository's tracked and untracked-but-not-ignored files, sent as a
# tar, because .dockerignore leaves out executor-image/*.go (the executor
# image does not need it, the gateway binary does).
#
#   scripts/compose-check.sh          # build what is missing or changed, validate
#   SKIP_BUILD=1 scripts/compose-check.sh   # validate only
#   FORCE=1 ...                       # rebuild the Go image too
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin

log() { printf 'compose-check: %s\n' "$*" >&2; }

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
	scripts/base-image.sh
	if [[ ${FORCE:-0} == 1 ]] || ! docker image inspect codegw/golang:local >/dev/null 2>&1; then
		log "importing the host's Go toolchain and module cache as codegw/golang:local"
		go mod download
		goroot=$(go env GOROOT) modcache=$(go env GOMODCACHE)
		tar -C / -c --transform "s,^${modcache#/},go/pkg/mod,; s,^${goroot#/},usr/local/go," \
			"${goroot#/}" "${modcache#/}/cache/download" |
			docker import - codegw/golang:local >/dev/null
	fi
	log "building codegw/api:latest"
	git ls-files -co --exclude-standard -z | grep -zv '^\.git' |
		tar --null -T - -c | docker build -q --network host -t codegw/api:latest -f Dockerfile.api - >/dev/null
	for svc in redis:redis-server nginx:nginx; do
		name=${svc%%:*} pkg=${svc#*:}
		docker image inspect "codegw/$name:local" >/dev/null 2>&1 && continue
		log "building codegw/$name:local"
		printf 'FROM codegw/debian:bookworm\nRUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends %s && rm -rf /var/lib/apt/lists/*\n' "$pkg" |
			docker build -q --network host -t "codegw/$name:local" - >/dev/null
	done
fi

if docker compose version >/dev/null 2>&1; then
	compose=(docker compose)
elif command -v docker-compose >/dev/null; then
	compose=(docker-compose)
else
	log "installing docker-compose (Debian's v1) to validate the file"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >&2
	compose=(docker-compose)
fi
log "validating docker-compose.yml with ${compose[*]}"
API_KEYS=check CLUSTER_SECRET=check REDIS_IMAGE=codegw/redis:local LB_IMAGE=codegw/nginx:local \
	"${compose[@]}" -f docker-compose.yml config -q
log "ok"
