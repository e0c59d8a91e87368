#!/usr/bin/env bash
# docker-down.sh stops the dockerd that docker-up.sh started, and only that
# one: an engine that was already running when docker-up.sh ran is left alone.
set -euo pipefail

STATE=/tmp/codegw-dockerd
PIDFILE=$STATE/dockerd.pid

log() { printf 'docker-down: %s\n' "$*" >&2; }

[[ -f $PIDFILE ]] || { log "no dockerd started by docker-up.sh"; exit 0; }
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
rm -f "$PIDFILE"
