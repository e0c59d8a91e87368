#!/usr/bin/env bash
# redis-down.sh stops the Redis that scripts/redis-up.sh started (found by its
# pidfile, with the same REDIS_PORT and REDIS_DIR) and removes its directory.
# It does nothing when that server is not running, and never stops a Redis it
# did not start.
set -euo pipefail

PORT=${REDIS_PORT:-6391}
DIR=${REDIS_DIR:-${TMPDIR:-/tmp}/codegw-redis-$PORT}
PIDFILE=$DIR/redis.pid

log() { printf 'redis-down: %s\n' "$*" >&2; }

if [[ ! -f $PIDFILE ]]; then
	log "not running (no $PIDFILE)"
	rm -rf "$DIR"
	exit 0
fi
pid=$(cat "$PIDFILE")
# A stale pidfile may name a recycled pid: only signal a redis-server.
if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
	[[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == redis-server* ]]; then
	kill -TERM "$pid"
	for _ in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "pid $pid ignored SIGTERM for 5s; killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	log "stopped redis-server on port $PORT (pid $pid)"
else
	log "pid $pid from $PIDFILE is not a running redis-server"
fi
rm -rf "$DIR"
