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
# tar, so that nothing a working copy has lying around (data/, bin/, build
# leftovers) reaches the image or its hash.
#
# Every image carries the hash of its inputs and is rebuilt when they change
# or it is not valid (scripts/lib.sh); a build goes to its tag only when its
# whole pipeline succeeded.
#
#   scripts/compose-check.sh          # build what is missing or changed, validate
#   SKIP_BUILD=1 scripts/compose-check.sh   # validate only
#   FRESH=1 ...                       # ignore every cache: rebuild all
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
# shellcheck source=lib.sh
. scripts/lib.sh

log() { printf 'compose-check: %s\n' "$*" >&2; }

GO_IMAGE=${GO_IMAGE:-codegw/golang:local}
API_IMAGE=${API_IMAGE:-codegw/api:latest}

# go_rootfs writes a tar of the host's Go toolchain (as /usr/local/go) and
# module download cache (as /go/pkg/mod/cache/download) on stdout.
go_rootfs() {
	local goroot modcache
	goroot=$(go env GOROOT) modcache=$(go env GOMODCACHE)
	tar -C / -c --transform "s,^${modcache#/},go/pkg/mod," --transform "s,^${goroot#/},usr/local/go," \
		"${goroot#/}" "${modcache#/}/cache/download"
}

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
	scripts/base-image.sh
	base=$(docker image inspect -f '{{.Id}}' codegw/debian:bookworm)

	go mod download
	hash=$( { echo "$base"; go version; } | inputs_hash scripts/compose-check.sh scripts/lib.sh go.mod go.sum)
	if image_current "$GO_IMAGE" "$hash" /usr/local/go/bin/go version; then
		log "$GO_IMAGE is up to date ($hash)"
	else
		log "importing the host's Go toolchain and module cache as $GO_IMAGE"
		IMPORT_CHANGES=()
		import_image "$GO_IMAGE" "$hash" go_rootfs || exit 1
	fi

	# The api image's context: the tracked and untracked-but-not-ignored
	# files, written out first so that a failing stage cannot feed docker
	# build a partial context.
	ctx=$(mktemp /tmp/codegw-api-context.XXXXXX.tar)
	trap 'rm -f "$ctx"' EXIT
	git ls-files -co --exclude-standard -z | { grep -zv '^\.git' || true; } | tar --null -T - -c >"$ctx"
	hash=$( { echo "$base"; docker image inspect -f '{{.Id}}' "$GO_IMAGE"; sha256sum "$ctx"; } | inputs_hash scripts/compose-check.sh scripts/lib.sh Dockerfile.api)
	if image_current "$API_IMAGE" "$hash" /bin/sh -c 'test -x /usr/local/bin/codegw'; then
		log "$API_IMAGE is up to date ($hash)"
	else
		log "building $API_IMAGE"
		mapfile -t proxy < <(proxy_build_args)
		build_image "$API_IMAGE" "$hash" --network host "${proxy[@]}" --build-arg "GO_IMAGE=$GO_IMAGE" -f Dockerfile.api - <"$ctx" || exit 1
	fi

	for svc in redis:redis-server nginx:nginx; do
		name=${svc%%:*} pkg=${svc#*:}
		dockerfile=$(printf 'FROM codegw/debian:bookworm\nRUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends %s && rm -rf /var/lib/apt/lists/*\n' "$pkg")
		hash=$( { echo "$base"; echo "$dockerfile"; } | inputs_hash scripts/lib.sh)
		if image_current "codegw/$name:local" "$hash" /bin/sh -c "command -v $pkg"; then
			continue
		fi
		log "building codegw/$name:local"
		build_image "codegw/$name:local" "$hash" --network host - <<<"$dockerfile" || exit 1
	done
fi

if docker compose version >/dev/null 2>&1; then
	compose=(docker compose)
elif command -v docker-compose >/dev/null; then
	compose=(docker-compose)
else
	log "neither \`docker compose\` nor docker-compose is installed: run scripts/docker-up.sh, which installs it"
	exit 1
fi
log "validating docker-compose.yml with ${compose[*]}"
API_KEYS=check CLUSTER_SECRET=check REDIS_IMAGE=codegw/redis:local LB_IMAGE=codegw/nginx:local \
	"${compose[@]}" -f docker-compose.yml config -q
log "ok"
