#!/usr/bin/env bash
# redis-up.sh starts a throwaway Redis for the tests: redis-server on
# 127.0.0.1:${REDIS_PORT:-6391}, no persistence, daemonized, with its pidfile,
# log and working directory in ${REDIS_DIR:-${TMPDIR:-/tmp}/codegw-redis-PORT}.
# It installs Debian's redis-server first when it is missing.
#
# It is idempotent: when the server it started still answers, it starts
# nothing. Its only output on stdout is the line that points the tests at the
# server, so a caller can run:
#
#	eval "$(scripts/redis-up.sh)"    # sets CODEGW_TEST_REDIS_URL
#	...
#	scripts/redis-down.sh
set -euo pipefail

PORT=${REDIS_PORT:-6391}
DIR=${REDIS_DIR:-${TMPDIR:-/tmp}/codegw-redis-$PORT}
PIDFILE=$DIR/redis.pid
LOGFILE=$DIR/redis.log
URL="redis://127.0.0.1:$PORT/0"

log() { printf 'redis-up: %s\n' "$*" >&2; }

answers() { [[ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null)" == PONG ]]; }

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
	if [[ $(id -u) == 0 ]]; then
		sudo=()
	elif command -v sudo >/dev/null; then
		sudo=(sudo)
	else
		log "redis-server is missing; install it as root: apt-get install -y redis-server"
		exit 1
	fi
	log "installing redis-server"
	export DEBIAN_FRONTEND=noninteractive
	"${sudo[@]}" apt-get install -y -q redis-server >&2 ||
		{ "${sudo[@]}" apt-get update -q >&2 && "${sudo[@]}" apt-get install -y -q redis-server >&2; }
fi

if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && answers; then
	log "already running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
	echo "export CODEGW_TEST_REDIS_URL=$URL"
	exit 0
fi
if answers; then
	# Not ours (no live pidfile): use it, but redis-down.sh will not stop it.
	log "a Redis not started by this script answers on 127.0.0.1:$PORT; using it"
	echo "export CODEGW_TEST_REDIS_URL=$URL"
	exit 0
fi

mkdir -p "$DIR"
rm -f "$PIDFILE"
redis-server --bind 127.0.0.1 --port "$PORT" --protected-mode yes \
	--save '' --appendonly no \
	--daemonize yes --pidfile "$PIDFILE" --logfile "$LOGFILE" --dir "$DIR" >&2

for _ in $(seq 100); do
	if answers; then
		log "started on 127.0.0.1:$PORT (pid $(cat "$PIDFILE" 2>/dev/null || echo '?'), dir $DIR)"
		echo "export CODEGW_TEST_REDIS_URL=$URL"
		exit 0
	fi
	sleep 0.1
done
log "redis-server did not answer on 127.0.0.1:$PORT within 10s; last log lines:"
tail -n 20 "$LOGFILE" >&2 2>/dev/null || true
exit 1
