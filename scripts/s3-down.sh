#!/usr/bin/env bash
# s3-down.sh stops the SeaweedFS that scripts/s3-up.sh started (found by its
# pidfile, with the same S3_PORT and S3_DIR) and removes its data. It never
# stops a server it did not start.
set -euo pipefail

PORT=${S3_PORT:-8391}
DIR=${S3_DIR:-${TMPDIR:-/tmp}/codegw-s3-$PORT}

log() { printf 's3-down: %s\n' "$*" >&2; }

if [[ -f $DIR/weed.pid ]]; then
	pid=$(cat "$DIR/weed.pid")
	if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == weed* ]]; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "pid $pid ignored SIGTERM for 10s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
		log "stopped SeaweedFS on port $PORT (pid $pid)"
	fi
fi
rm -rf "$DIR"
