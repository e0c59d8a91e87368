#!/usr/bin/env bash
# s3-up.sh starts a throwaway S3-compatible object store for the tests:
# SeaweedFS (`weed server -s3`, Apache-2.0), built from its Go module with
# the host's Go proxy and cached by version under /var/cache/codegw, on
# loopback ports only (S3 on ${S3_PORT:-8391}), its data, pidfile and log in
# ${S3_DIR:-${TMPDIR:-/tmp}/codegw-s3-PORT}.
#
# Idempotent: when the server it started still answers, it starts nothing.
# Its only output on stdout is the lines that point the tests at it:
#
#	eval "$(scripts/s3-up.sh)"    # sets CODEGW_S3_ENDPOINT, _ACCESS_KEY, _SECRET_KEY
#	...
#	scripts/s3-down.sh
#
# The first build takes several minutes (SeaweedFS is large); like
# staticcheck's, the binary is a pinned tool reused by version and Go
# version once it runs, whatever FRESH says.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin

# The SeaweedFS version: a module version the Go proxy serves.
WEED_VERSION=v0.0.0-20261109003541-7506e5f91cd6
PORT=${S3_PORT:-8391}
DIR=${S3_DIR:-${TMPDIR:-/tmp}/codegw-s3-$PORT}
CACHE=${CODEGW_CACHE:-/var/cache/codegw}/seaweedfs-$WEED_VERSION-$(go env GOVERSION)
BIN=$CACHE/weed
ACCESS=codegw-test
SECRET=codegw-test-secret-0123456789

log() { printf 's3-up: %s\n' "$*" >&2; }

exports() {
	echo "export CODEGW_S3_ENDPOINT=http://127.0.0.1:$PORT"
	echo "export CODEGW_S3_ACCESS_KEY=$ACCESS"
	echo "export CODEGW_S3_SECRET_KEY=$SECRET"
}

# answers: any HTTP status from the S3 port (403 for an anonymous listing).
answers() { curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$PORT/" 2>/dev/null | grep -qv '^000$'; }

if [[ ! -x $BIN ]] || ! "$BIN" version >/dev/null 2>&1; then
	log "building SeaweedFS $WEED_VERSION (several minutes the first time)"
	work=$(mktemp -d)
	trap 'rm -rf "$work"' EXIT
	(
		cd "$work"
		printf 'module codegwweed\n\ngo 1.26\n' >go.mod
		GOFLAGS=-mod=mod go get "github.com/seaweedfs/seaweedfs/weed@$WEED_VERSION" >&2
		GOFLAGS=-mod=mod nice -n 5 go build -trimpath -o weed "github.com/seaweedfs/seaweedfs/weed" >&2
	)
	"$work/weed" version >/dev/null
	mkdir -p "$CACHE"
	mv "$work/weed" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
	log "built $BIN"
fi

if [[ -f $DIR/weed.pid ]] && kill -0 "$(cat "$DIR/weed.pid")" 2>/dev/null && answers; then
	log "already running on 127.0.0.1:$PORT (pid $(cat "$DIR/weed.pid"))"
	exports
	exit 0
fi
rm -rf "$DIR"
mkdir -p "$DIR/data"
cat >"$DIR/s3.json" <<JSON
{"identities": [{"name": "codegw-test", "credentials": [{"accessKey": "$ACCESS", "secretKey": "$SECRET"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
JSON
# Every port on loopback, from PORT up: master, volume, filer and their
# gRPC ports (weed's defaults would be 9333, 8080, 8888 and +10000).
setsid "$BIN" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$DIR/data" \
	-master.port=$((PORT + 1)) -master.port.grpc=$((PORT + 11)) -master.volumeSizeLimitMB=64 \
	-volume.port=$((PORT + 2)) -volume.port.grpc=$((PORT + 12)) -volume.max=0 \
	-filer -filer.port=$((PORT + 3)) -filer.port.grpc=$((PORT + 13)) \
	-s3 -s3.port="$PORT" -s3.port.grpc=$((PORT + 14)) -s3.config="$DIR/s3.json" \
	>"$DIR/weed.log" 2>&1 </dev/null &
echo $! >"$DIR/weed.pid"
for _ in $(seq 600); do
	if answers; then
		log "started on 127.0.0.1:$PORT (pid $(cat "$DIR/weed.pid"), dir $DIR)"
		exports
		exit 0
	fi
	if ! kill -0 "$(cat "$DIR/weed.pid")" 2>/dev/null; then break; fi
	sleep 0.1
done
log "SeaweedFS did not answer on 127.0.0.1:$PORT; last log lines:"
tail -n 30 "$DIR/weed.log" >&2 || true
exit 1
