#!/usr/bin/env bash
# librechat-agents.sh installs LibreChat's own code tool, the npm package
# @librechat/agents at the pinned version, into a cache directory outside the
# repository, for gateway/librechat_client_test.go (the real-client test of
# codegw's LibreChat API). The registry comes from the host's npm config. It
# prints the directory that holds node_modules (the test's
# CODEGW_LIBRECHAT_AGENTS); a second run with the same version reuses it.
#
# Usage: scripts/librechat-agents.sh           (needs node and npm)
#        scripts/librechat-agents.sh --check   (print the directory if installed, else exit 1)
set -euo pipefail

version=2.4.322 # the classic Code Interpreter API: X-API-Key, /files/{session_id}, files [{id, session_id, name}]
dir=${CODEGW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/codegw}/librechat-agents-$version

if [[ ${1:-} == --check ]]; then
	[[ -f $dir/.complete ]] || exit 1
	echo "$dir"
	exit 0
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
	echo "librechat-agents: node and npm are needed (Debian: nodejs npm)" >&2
	exit 1
fi
if [[ ! -f $dir/.complete ]]; then
	rm -rf "$dir"
	mkdir -p "$dir"
	npm install --prefix "$dir" --no-audit --no-fund --omit=dev --loglevel=error "@librechat/agents@$version" >&2
	# The code tool's module (the main entry also loads every LLM provider).
	node -e 'require(process.argv[1] + "/node_modules/@librechat/agents/dist/cjs/tools/CodeExecutor.cjs")' "$dir" >&2
	touch "$dir/.complete"
fi
echo "$dir"
