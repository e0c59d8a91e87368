#!/usr/bin/env bash
# docker-down.sh stops the dockerd that docker-up.sh started, and only that
# one: an engine that was already running when docker-up.sh ran is left alone.
# It stops it when the last docker-up.sh user leaves (see $STATE/users), so
# that concurrent test runs do not pull the engine from under each other;
# FORCE=1 stops it anyway.
set -euo pipefail

STATE=/tmp/codegw-dockerd
PIDFILE=$STATE/dockerd.pid

log() { printf 'docker-down: %s\n' "$*" >&2; }

[[ -f $PIDFILE ]] || { log "no dockerd started by docker-up.sh"; exit 0; }
left=$(
	(
		flock 9
		n=$(cat "$STATE/users" 2>/dev/null || echo 1)
		[[ $n =~ ^[0-9]+$ ]] || n=1
		((n > 0)) && n=$((n - 1))
		echo "$n" >"$STATE/users"
		echo "$n"
	) 9>>"$STATE/users.lock"
)
if [[ ${FORCE:-0} != 1 && $left -gt 0 ]]; then
	log "dockerd is still used by $left other docker-up.sh caller(s); leaving it running"
	exit 0
fi
pid=$(cat "$PIDFILE")
# Only signal the pid when it is still a dockerd: pids are reused.
if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]]; then
	log "stopping dockerd $pid"
	kill -TERM "$pid"
	for _ in $(seq 1 150); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "dockerd $pid did not stop in 15s; killing it"
		kill -KILL "$pid" || true
	fi
fi
rm -f "$PIDFILE" "$STATE/users"
