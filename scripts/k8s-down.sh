#!/usr/bin/env bash
# k8s-down.sh removes the one-node cluster of scripts/k8s-up.sh and leaves
# nothing of it behind: its pods' containers and shims, its processes, its
# mounts, its pods' network namespaces, veths and cni0, its iptables rules
# and chains (KUBE-*, CNI-*, the DROP rules), the sysctls it changed (back to
# what k8s-up.sh recorded), its cgroups and the host paths the kubelet and
# runc use (unless they were there before). It never touches the Docker
# engine's containerd or /run/containerd itself. The built binaries
# (scripts/k8s-build.sh's cache) stay. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/sbin:/sbin
log() { printf 'k8s-down: %s\n' "$*" >&2; }
# phase NAME logs the time spent so far when K8S_DEBUG=1.
phase() { [[ ${K8S_DEBUG:-0} != 1 ]] || log "$SECONDS s: $*"; }
# shellcheck source=k8s-lib.sh
. scripts/k8s-lib.sh
# Best effort from here: every step runs even when an earlier one found
# nothing to remove or failed.
set +e
[[ $(id -u) == 0 ]] || { log "needs root"; exit 1; }
bin=$(cat "$K8S_STATE/bin" 2>/dev/null || true)

# stop NAME: SIGTERM, then SIGKILL after 10 s, to the process k8s-up.sh
# started as NAME.
stop() {
	local pid i
	pid=$(cat "$K8S_STATE/pids/$1" 2>/dev/null) || return 0
	if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null
		for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
	fi
	rm -f "$K8S_STATE/pids/$1"
}

# The pods first, while containerd runs: stop the kubelet (it would restart
# them), then kill and delete every task and container of the CRI namespace.
phase "stop kube-proxy"
stop kube-proxy
stop kubelet
if [[ -S $K8S_SOCK ]]; then
	ctr_() { timeout 30 ctr -a "$K8S_SOCK" -n k8s.io "$@"; }
	for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$c" >/dev/null 2>&1; done
	sleep 0.5
	for c in $(ctr_ containers ls -q 2>/dev/null); do
		ctr_ tasks delete -f "$c" >/dev/null 2>&1
		ctr_ containers delete "$c" >/dev/null 2>&1
	done
fi
phase "the control plane and containerd"
for c in kube-scheduler kube-controller-manager kube-apiserver etcd containerd; do stop "$c"; done
# Shims (and anything else) of this containerd: they name its socket. A
# shim listens on /run/containerd/s/<sha256 of "<containerd socket>/<namespace>/<id>">
# whatever containerd's state directory (containerd 1.6 hard-codes it; the
# Docker engine's shims use the same directory): only ours are removed.
for p in /proc/[0-9]*; do
	cmd=$({ tr '\0' '\n' <"$p/cmdline"; } 2>/dev/null) || continue
	grep -qxF -- "$K8S_SOCK" <<<"$cmd" || continue
	kill -9 "${p#/proc/}" 2>/dev/null
	ns=$(grep -A1 -x -- -namespace <<<"$cmd" | sed -n 2p)
	id=$(grep -A1 -x -- -id <<<"$cmd" | sed -n 2p)
	if [[ -n $ns && -n $id ]]; then
		s=$(printf '%s' "$K8S_SOCK/$ns/$id" | sha256sum | cut -c1-64)
		rm -f "/run/containerd/s/$s"
	fi
done

phase "Mounts under the cluster"
# Mounts under the cluster's own directories, deepest first, and the pods'
# network namespaces created since k8s-up.sh recorded the host.
before=$K8S_STATE/before
was() { [[ -f $before ]] && grep -qxF -- "$1" "$before"; }
awk '{print $2}' /proc/self/mounts | grep -E "^($K8S_STATE|$K8S_RUN|$K8S_IMAGES|/var/lib/kubelet|/run/netns/cni-)" | sort -r |
	while read -r m; do umount -l "$m" 2>/dev/null; done
for n in /run/netns/cni-*; do
	[[ -e $n && -f $before ]] || continue
	was "netns $n" && continue
	umount -l "$n" 2>/dev/null
	rm -f "$n"
done

phase "Interfaces:"
# Interfaces: the pods' veths went with their namespaces; the bridge.
# A veth whose namespace outlives its processes for a while (the kernel
# frees it lazily) is still on the bridge: delete those first.
if ip link show cni0 >/dev/null 2>&1; then
	for v in $(ip -o link show master cni0 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
		ip link delete "$v" 2>/dev/null
	done
	ip link delete cni0
fi

phase "iptables:"
# iptables: kube-proxy's own clean-up, then every KUBE-* and CNI-* chain
# (the kubelet's, the CNI plugins') and the rules that jump to them, then
# this cluster's DROP rules.
[[ -x $bin/kube-proxy ]] && "$bin/kube-proxy" --cleanup >/dev/null 2>&1
for ipt in iptables ip6tables; do
	command -v "$ipt" >/dev/null || continue
	for table in filter nat mangle raw; do
		rules=$("$ipt" -t "$table" -S 2>/dev/null) || continue
		# Rules in other chains that jump to ours, or carry our marks.
		grep -E '^-A ' <<<"$rules" | grep -E -- "-j (KUBE-|CNI-)|$K8S_MARK|name: codegw id:" | grep -vE '^-A (KUBE-|CNI-)' |
			while read -r r; do
				# shellcheck disable=SC2086
				eval "$ipt -t $table ${r/-A /-D }" 2>/dev/null
			done
		for chain in $(grep -E '^-N (KUBE-|CNI-)' <<<"$rules" | awk '{print $2}'); do
			"$ipt" -t "$table" -F "$chain" 2>/dev/null
		done
		for chain in $(grep -E '^-N (KUBE-|CNI-)' <<<"$rules" | awk '{print $2}'); do
			"$ipt" -t "$table" -X "$chain" 2>/dev/null
		done
	done
done

phase "Sysctls back"
# Sysctls back to what they were.
if [[ -f $before ]]; then
	while read -r kind name value; do
		[[ $kind == sysctl ]] || continue
		[[ $(sysctl -n "$name" 2>/dev/null) == "$value" ]] || sysctl -q -w "$name=$value" 2>/dev/null
	done <"$before"
fi

phase "cgroups the kubelet"
# cgroups the kubelet made (kubepods) and the host paths.
for ctl in /sys/fs/cgroup/*/; do
	[[ -d ${ctl}kubepods ]] && find "${ctl}kubepods" -depth -type d -exec rmdir {} + 2>/dev/null
done
# Only with k8s-up.sh's record: without it nothing says which were ours.
# Shared directories (K8S_SHARED_DIRS) are only removed when empty.
if [[ -f $before ]]; then
	for p in "${K8S_HOST_PATHS[@]}"; do
		[[ -e $p ]] || continue
		was "path $p" && continue
		rm -rf "$p"
	done
	for p in "${K8S_SHARED_DIRS[@]}"; do
		[[ -d $p ]] || continue
		was "path $p" && continue
		rmdir "$p" 2>/dev/null
	done
fi
rm -rf "$K8S_RUN" "$K8S_STATE"
# The images' root stays (see k8s-lib.sh) unless K8S_KEEP_IMAGES=0.
[[ ${K8S_KEEP_IMAGES:-1} == 0 ]] && rm -rf "$K8S_IMAGES"
log "cluster removed"
