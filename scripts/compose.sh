#!/usr/bin/env bash
# compose.sh runs Docker Compose on the repository's docker-compose.yml with
# whichever Compose this machine has: the `docker compose` plugin when it
# answers, else the standalone docker-compose. Debian bookworm packages no
# Compose plugin (neither docker-compose-plugin nor docker-compose-v2), only
# docker-compose 1.29, which scripts/docker-up.sh installs; both read the same
# file and the same .env.
#
# It runs from the repository's root, so that the .env written there by
# scripts/compose-check.sh (the images to use) is read whatever the caller's
# directory; paths given to -f are relative to that root. Arguments are
# Compose's own:
#
#   scripts/compose.sh up -d --scale api=3
#   scripts/compose.sh ps
#   scripts/compose.sh down -v
set -euo pipefail
cd "$(dirname "$0")/.."

if docker compose version >/dev/null 2>&1; then
	exec docker compose "$@"
fi
if command -v docker-compose >/dev/null; then
	exec docker-compose "$@"
fi
echo 'compose: neither `docker compose` nor docker-compose is installed: run scripts/docker-up.sh, which installs it' >&2
exit 1
