#!/usr/bin/env bash
# base-image.sh builds the local Debian bookworm base image that
# Dockerfile.executor starts FROM, without any container registry:
# debootstrap a minbase rootfs from the machine's own Debian mirror and
# `docker import` it. It does nothing when the image carries the hash of
# this script (its inputs) and runs; otherwise it rebuilds it (scripts/lib.sh).
#
# Environment: BASE_IMAGE (default codegw/debian:bookworm), DEBIAN_MIRROR and
# DEBIAN_SECURITY_MIRROR (default: read from /etc/apt/sources.list{,.d/*}),
# FRESH=1 (or FORCE=1) to rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. scripts/lib.sh

BASE_IMAGE=${BASE_IMAGE:-codegw/debian:bookworm}
SUITE=bookworm

log() { printf 'base-image: %s\n' "$*" >&2; }

hash=$(echo "$SUITE" | inputs_hash scripts/base-image.sh)
if image_current "$BASE_IMAGE" "$hash" /bin/true; then
	log "$BASE_IMAGE is up to date ($hash)"
	exit 0
fi

# mirror_for SUITE prints the URI of the first enabled apt source that serves
# SUITE, reading one-line (.list) and deb822 (.sources) files.
mirror_for() {
	local want=$1 f
	local files=()
	[[ -f /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
	for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
		[[ -f $f ]] && files+=("$f")
	done
	((${#files[@]})) || return 0
	awk -v want="$want" '
		function flush() {
			if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no") {
				n = split(suites, s, /[ \t]+/)
				for (i = 1; i <= n; i++) if (s[i] == want) { split(uris, u, /[ \t]+/); print u[1]; found = 1; exit }
			}
			types = uris = suites = ""; enabled = ""
		}
		FNR == 1 { flush() }
		/^[ \t]*#/ { next }
		FILENAME ~ /\.sources$/ {
			if ($0 ~ /^[ \t]*$/) { flush(); next }
			k = tolower($1); sub(/:$/, "", k); $1 = ""; sub(/^[ \t]+/, "")
			if (k == "types") types = $0
			else if (k == "uris") uris = $0
			else if (k == "suites") suites = $0
			else if (k == "enabled") enabled = tolower($0)
			next
		}
		$1 == "deb" {
			i = 2
			if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
			if ($(i + 1) == want) { print $i; found = 1; exit }
		}
		END { if (!found) flush() }
	' "${files[@]}" | head -n1
}

MIRROR=${DEBIAN_MIRROR:-$(mirror_for "$SUITE")}
[[ -n $MIRROR ]] || {
	log "no apt source for $SUITE in /etc/apt/sources.list{,.d/*}: set DEBIAN_MIRROR to a Debian mirror's URL"
	exit 1
}
SECURITY=${DEBIAN_SECURITY_MIRROR:-$(mirror_for "$SUITE-security")}
MIRROR=${MIRROR%/}
SECURITY=${SECURITY%/}

command -v debootstrap >/dev/null || {
	log "installing debootstrap"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2 ||
		{ apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2; }
}

root=$(mktemp -d /var/tmp/codegw-rootfs.XXXXXX)
trap 'rm -rf --one-file-system "$root"' EXIT

log "debootstrap $SUITE from $MIRROR"
start=$SECONDS
debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || {
	tail -n 30 "$root.log" >&2
	rm -f "$root.log"
	exit 1
}
rm -f "$root.log"

# The same mirrors the host uses, plus updates and security, so that apt-get
# inside `docker build` gets current packages.
{
	echo "deb $MIRROR $SUITE main"
	echo "deb $MIRROR $SUITE-updates main"
	if [[ -n $SECURITY ]]; then echo "deb $SECURITY $SUITE-security main"; fi
} >"$root/etc/apt/sources.list"
# Image hygiene: no package caches or recommends, no docs.
cat >"$root/etc/apt/apt.conf.d/90codegw" <<'CONF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
CONF
cat >"$root/etc/dpkg/dpkg.cfg.d/90codegw-nodoc" <<'CONF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
CONF
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
# resolv.conf and hostname are provided by the engine.
: >"$root/etc/resolv.conf"
: >"$root/etc/hostname"

log "importing as $BASE_IMAGE"
IMPORT_CHANGES=('ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'ENV LANG=C.UTF-8' 'CMD ["/bin/bash"]')
import_image "$BASE_IMAGE" "$hash" tar --numeric-owner -C "$root" -c . || exit 1
log "built $BASE_IMAGE in $((SECONDS - start))s"
