#!/usr/bin/env bash
# compose-check.sh builds, without any container registry, the images
# docker-compose.yml runs, and validates the compose file:
#
#   codegw/debian:bookworm   scripts/base-image.sh (debootstrap)
#   codegw/golang:local      the host's Go toolchain and module download cache,
#                            imported (Dockerfile.api's build stage uses it)
#   codegw/api:latest        Dockerfile.api
#   codegw/redis:local, codegw/nginx:local   Redis and the load balancer, from
#                            Debian's packages, when no registry serves the
#                            official images (compose's defaults): then it
#                            selects them in .env (REDIS_IMAGE, LB_IMAGE), so
#                            that scripts/compose.sh up needs no setting
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
#   LOCAL_IMAGES=1 (or 0) ...         # local Redis and nginx always (never); default: when no registry
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
# shellcheck source=lib.sh
. scripts/lib.sh

log() { printf 'compose-check: %s\n' "$*" >&2; }

GO_IMAGE=${GO_IMAGE:-codegw/golang:local}
API_IMAGE=${API_IMAGE:-codegw/api:latest}

# LOCAL_IMAGES: auto (the default) uses the registry's Redis and nginx images
# (docker-compose.yml's defaults) when the engine has them or can pull them,
# else builds local ones; 1 always builds and selects the local ones; 0 never.
LOCAL_IMAGES=${LOCAL_IMAGES:-auto}

# The local Redis: Debian's redis-server, run as its redis user with its data
# in the /data volume. Protected mode is off: with no configuration file
# redis-server refuses every client that is not on loopback, and the
# gateway replicas are other containers. Redis is reached only on the
# compose network (no host port is published).
REDIS_DOCKERFILE='FROM codegw/debian:bookworm
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/* && install -d -o redis -g redis -m 0750 /data
USER redis
WORKDIR /data
VOLUME /data
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no", "--dir", "/data"]
'
# The local load balancer: Debian's nginx; docker-compose.yml writes its
# configuration at start.
NGINX_DOCKERFILE='FROM codegw/debian:bookworm
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx && rm -rf /var/lib/apt/lists/*
EXPOSE 8080
CMD ["nginx", "-g", "daemon off;"]
'

# default_image VAR prints docker-compose.yml's default for ${VAR:-...}.
default_image() { sed -n "s/.*\${$1:-\([^}]*\)}.*/\1/p" docker-compose.yml | head -n1; }

# use_local_images tells whether the local Redis and nginx images are to be
# used: LOCAL_IMAGES=1, or auto and a registry image is neither here nor
# pullable.
use_local_images() {
	case $LOCAL_IMAGES in
	1) return 0 ;;
	0) return 1 ;;
	esac
	local img
	for img in "$(default_image REDIS_IMAGE)" "$(default_image LB_IMAGE)"; do
		docker image inspect "$img" >/dev/null 2>&1 && continue
		log "pulling $img"
		timeout 300 docker pull -q "$img" >/dev/null 2>&1 || return 0
	done
	return 1
}

# build_local NAME BASE_ID DOCKERFILE PROGRAM builds codegw/NAME:local from
# DOCKERFILE unless it is current; it must run PROGRAM.
build_local() {
	local tag=codegw/$1:local hash
	hash=$( { echo "$2"; echo "$3"; } | inputs_hash scripts/lib.sh)
	if image_current "$tag" "$hash" /bin/sh -c "command -v $4"; then
		log "$tag is up to date ($hash)"
		return 0
	fi
	log "building $tag"
	build_image "$tag" "$hash" --network host - <<<"$3" || exit 1
}

# write_env KEY=VALUE... writes the settings into .env, the file Compose
# reads from the repository's root, between marker lines that each run
# rewrites; the rest of .env is the user's and kept. A key the user sets
# there is not written. With no settings the block goes (and .env with it
# when nothing else is left).
write_env() {
	local tmp kv
	tmp=$(mktemp .env.XXXXXX)
	if [[ -f .env ]]; then
		awk '/^# >>> scripts\/compose-check.sh/ { skip = 1 } !skip { print } /^# <<< scripts\/compose-check.sh/ { skip = 0 }' .env >"$tmp"
	fi
	local lines=()
	for kv in "$@"; do
		grep -q "^[[:space:]]*${kv%%=*}=" "$tmp" || lines+=("$kv")
	done
	if ((${#lines[@]})); then
		{
			echo "# >>> scripts/compose-check.sh: the images to use, rewritten by each run (settings of your own go outside this block)"
			printf '%s\n' "${lines[@]}"
			echo "# <<< scripts/compose-check.sh"
		} >>"$tmp"
	fi
	if [[ -s $tmp ]]; then
		mv "$tmp" .env
	else
		rm -f "$tmp" .env
	fi
}

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

	if use_local_images; then
		build_local redis "$base" "$REDIS_DOCKERFILE" redis-server
		build_local nginx "$base" "$NGINX_DOCKERFILE" nginx
		write_env REDIS_IMAGE=codegw/redis:local LB_IMAGE=codegw/nginx:local
		log ".env selects codegw/redis:local and codegw/nginx:local"
	else
		write_env
		log "the registry images are used: $(default_image REDIS_IMAGE), $(default_image LB_IMAGE)"
	fi
fi

log "validating docker-compose.yml"
API_KEYS=check CLUSTER_SECRET=check scripts/compose.sh -f docker-compose.yml config -q
log "ok"
