#!/usr/bin/env bash
# deps.sh installs what local kernels and the tests need on Debian/Ubuntu:
# the kernel-side packages listed in executor-image/packages.txt plus the
# tools of the local provisioner (bubblewrap) and of the test suite.
#
# It is idempotent and fast when everything is there: each package is checked
# with dpkg-query, and apt-get runs only for missing ones. It needs root (or
# sudo); without either it prints exactly what to install and exits 1.
#
# Usage: scripts/deps.sh [--check]   (--check: report only, never install)
set -euo pipefail

cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

check_only=0
if [[ "${1:-}" == "--check" ]]; then
	check_only=1
fi

# Tools beyond the kernel side: the sandbox of local kernels, and what the
# tests and scripts use (chromium: the playground's browser test; Notebook
# and websocket-client: the real Jupyter clients of
# gateway/jupyter_clients_test.go).
extra=(bubblewrap iproute2 ca-certificates git curl chromium python3-notebook python3-websocket)
# npm: installs @librechat/agents for the LibreChat real-client test
# (scripts/librechat-agents.sh); skipped when a Node.js distribution that
# bundles npm is already there.
if ! command -v npm >/dev/null; then
	extra+=(npm)
fi
# The one-node Kubernetes of scripts/k8s-up.sh: a private containerd, runc,
# the CNI plugins, kube-proxy's conntrack, openssl and gcc (certificates,
# the pause image).
extra+=(containerd runc containernetworking-plugins iptables conntrack openssl gcc libc6-dev)

mapfile -t listed < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' executor-image/packages.txt | grep -v '^$')
wanted=("${listed[@]}" "${extra[@]}")

# One dpkg-query for all packages: it prints a line for each known package
# (unknown ones only on stderr); a package is missing unless its status says
# "install ok installed".
declare -A installed=()
while read -r name status; do
	if [[ "$status" == "install ok installed" ]]; then
		installed[${name%%:*}]=1
	fi
done < <(dpkg-query -W -f='${Package} ${Status}\n' "${wanted[@]}" 2>/dev/null || true)

missing=()
for p in "${wanted[@]}"; do
	if [[ -z "${installed[$p]:-}" ]]; then
		missing+=("$p")
	fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
	echo "deps: all ${#wanted[@]} packages installed"
	exit 0
fi

echo "deps: missing: ${missing[*]}"
if [[ $check_only -eq 1 ]]; then
	exit 1
fi

if [[ $(id -u) -eq 0 ]]; then
	sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
	sudo=(sudo -n env DEBIAN_FRONTEND=noninteractive)
else
	echo "deps: not root and no sudo; as root, run:" >&2
	echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
	exit 1
fi

"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "deps: installed ${missing[*]}"
