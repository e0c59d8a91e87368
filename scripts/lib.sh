# lib.sh is sourced by the scripts that build and cache images. It keeps the
# one rule every cached artefact follows: an image is reused only when it
# carries the hash of the inputs that made it (label codegw.build-hash) and
# is valid (not empty, runnable when asked); otherwise it is rebuilt. A
# build or import goes to a temporary tag first and is moved to its real tag
# only when every stage of its pipeline succeeded, so a broken build path can
# never leave an image behind that a later run would trust.
#
# FRESH=1 (or FORCE=1) in the environment ignores every cache: each image is
# rebuilt, and docker build runs with --no-cache.
#
# Callers set `set -euo pipefail` themselves and define log().

HASH_LABEL=codegw.build-hash
# IMPORT_CHANGES are the --change instructions of the next import_image.
IMPORT_CHANGES=()

# fresh tells whether caches are to be ignored.
fresh() { [[ ${FRESH:-0} == 1 || ${FORCE:-0} == 1 ]]; }

# inputs_hash prints a short hash of its standard input followed by the
# contents of the files named as arguments (in that order).
inputs_hash() {
	{
		cat
		local f
		for f in "$@"; do
			printf '\n--- %s\n' "$f"
			cat -- "$f"
		done
	} | sha256sum | cut -c1-32
}

# image_label TAG prints TAG's build hash, or nothing.
image_label() {
	docker image inspect -f "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$1" 2>/dev/null || true
}

# image_valid TAG [CMD...] tells whether TAG exists, is not empty and, when a
# command is given, runs it successfully with no network.
image_valid() {
	local tag=$1 size
	shift
	size=$(docker image inspect -f '{{.Size}}' "$tag" 2>/dev/null) || return 1
	[[ $size =~ ^[0-9]+$ ]] && ((size > 1000000)) || return 1
	if (($#)); then
		docker run --rm --network none --entrypoint "$1" "$tag" "${@:2}" >/dev/null 2>&1 || return 1
	fi
}

# image_current TAG HASH [CMD...] tells whether TAG can be reused: caches are
# not ignored, its build hash is HASH and it is valid (see image_valid).
image_current() {
	local tag=$1 hash=$2
	shift 2
	! fresh && [[ $(image_label "$tag") == "$hash" ]] && image_valid "$tag" "$@"
}

# commit_image TMP TAG [CMD...] checks the freshly made TMP (see image_valid)
# and moves it to TAG; an invalid TMP is removed and the call fails.
commit_image() {
	local tmp=$1 tag=$2
	shift 2
	if ! image_valid "$tmp" "$@"; then
		docker image rm -f "$tmp" >/dev/null 2>&1 || true
		log "the image made for $tag is empty or does not run; not tagging it"
		return 1
	fi
	docker tag "$tmp" "$tag"
	docker image rm "$tmp" >/dev/null
}

# tmp_tag TAG prints a temporary tag for building TAG.
tmp_tag() { printf '%s-building-%s\n' "${1%%:*}" "$$"; }

# import_image TAG HASH PRODUCER... runs PRODUCER (a command writing a tar
# of a root file system on stdout) into `docker import`, labelled with HASH,
# and tags the result TAG only when both stages succeeded and it is valid.
# Extra --change instructions come from the IMPORT_CHANGES array.
import_image() {
	local tag=$1 hash=$2 tmp
	shift 2
	tmp=$(tmp_tag "$tag")
	local changes=(--change "LABEL $HASH_LABEL=$hash")
	local c
	for c in "${IMPORT_CHANGES[@]}"; do changes+=(--change "$c"); done
	if ! "$@" | docker import "${changes[@]}" - "$tmp" >/dev/null; then
		docker image rm -f "$tmp" >/dev/null 2>&1 || true
		log "importing $tag failed: a stage of its pipeline failed"
		return 1
	fi
	commit_image "$tmp" "$tag"
}

# build_image TAG HASH DOCKER_BUILD_ARGS... runs `docker build` (the legacy
# builder: no BuildKit frontend image can be pulled here) labelled with HASH
# into a temporary tag, and tags TAG only when it succeeded. The build's
# context is read from stdin when the last argument is "-". Its log is shown
# when it fails.
build_image() {
	local tag=$1 hash=$2 tmp buildlog
	shift 2
	tmp=$(tmp_tag "$tag")
	buildlog=$(mktemp /tmp/codegw-build.XXXXXX.log)
	local nocache=()
	fresh && nocache=(--no-cache)
	if ! DOCKER_BUILDKIT=0 docker build "${nocache[@]}" --label "$HASH_LABEL=$hash" -t "$tmp" "$@" >"$buildlog" 2>&1; then
		tail -n 40 "$buildlog" >&2
		docker image rm -f "$tmp" >/dev/null 2>&1 || true
		log "building $tag failed; full log: $buildlog"
		return 1
	fi
	rm -f "$buildlog"
	commit_image "$tmp" "$tag"
}

# proxy_build_args prints, one per line, the --build-arg flags that pass the
# host's own proxy and Go module proxy settings into a build.
proxy_build_args() {
	local v
	for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
		[[ -n ${!v:-} ]] && printf -- '--build-arg\n%s=%s\n' "$v" "${!v}"
	done
	if command -v go >/dev/null; then
		printf -- '--build-arg\nGOPROXY=%s\n' "$(go env GOPROXY)"
	fi
	return 0
}
