#!/usr/bin/env bash
# build.sh bundles the playground's editor (CodeMirror 6 with Python
# highlighting) into web/static/editor.js, reproducibly: exact versions from
# the committed package-lock.json (npm ci; the registry comes from the host's
# npm config), esbuild pinned there too, no timestamps in the output. The
# bundle is committed, so `go build` needs no npm. bundle.sum records the
# hashes of the inputs and of the bundle: web's tests check it offline
# (TestBundleSum) and rebuild the bundle to compare when npm can
# (TestBundleReproducible).
#
# Usage: web/editor/build.sh [OUTFILE]   (default: ../static/editor.js, and bundle.sum)
set -euo pipefail
cd "$(dirname "$0")"
out=${1:-../static/editor.js}
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2
node_modules/.bin/esbuild src/editor.js --bundle --format=iife --minify --target=es2020 \
	--legal-comments=eof --log-level=warning --outfile="$out"
if [[ $# -eq 0 ]]; then
	sha256sum build.sh package.json package-lock.json src/editor.js ../static/editor.js >bundle.sum
fi
