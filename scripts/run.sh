#!/usr/bin/env bash
# run.sh installs what local kernels need (once; seconds afterwards) and
# starts the gateway on http://127.0.0.1:14564 with the embedded defaults:
# local kernels in a bubblewrap sandbox, an in-memory session store and a
# warm pool. Configuration comes from the environment or a .env file.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
scripts/deps.sh
mkdir -p bin
go build -o bin/codegw ./cmd/codegw
exec bin/codegw "$@"
